//! The rule-file loader: arbitrary YAML never panics; it compiles or is rejected with an error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use logwarden::detect::DetectConfig;

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("lw-fuzz-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("rules.yml");
    if std::fs::write(&path, data).is_err() {
        return;
    }
    let cfg = DetectConfig { builtin: false, rules: vec![path], ..DetectConfig::default() };
    let _ = cfg.validate();
});
