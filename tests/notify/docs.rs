//! The YAML examples in docs/alerting.md are valid configuration.

use logwarden::notify::{validate, NotifierConfig, ReportsConfig};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Sections {
    #[serde(default)]
    notify: Vec<NotifierConfig>,
    #[serde(default)]
    reports: ReportsConfig,
}

#[test]
fn every_yaml_example_in_alerting_md_validates() {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/alerting.md")).unwrap();
    let mut checked = 0;
    for block in doc.split("```yaml\n").skip(1) {
        let yaml = block.split("```").next().unwrap();
        let mut sections: Sections =
            serde_yaml_ng::from_str(yaml).unwrap_or_else(|e| panic!("{e} in example:\n{yaml}"));
        // The example's directory need not exist here.
        if let Some(file) = &mut sections.reports.file {
            *file = std::env::temp_dir().join(file.file_name().unwrap());
        }
        validate(&sections.notify, &sections.reports)
            .unwrap_or_else(|e| panic!("{e} in example:\n{yaml}"));
        checked += 1;
    }
    assert!(checked >= 7, "only {checked} examples found");
}
