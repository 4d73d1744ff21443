//! Scan: runs the detection engine over log files, offline.
//!
//! Receives paths (files, directories whose files are scanned in name order, or `-` for
//! stdin). Each file is one stream labelled `{filename="<path>"}`; each line's event time is
//! parsed from the line (see [`crate::detect::extract::parse_line_time`]), falling back to the
//! previous line's. Docker JSON-file lines (`{"log":"…","time":"…"}`) are unwrapped first.
//! Emits incidents (text or JSON) as they fire, or one JSON object per (line, rule) match.
//! Reads line by line with a bounded line length, so memory stays constant on files of any size.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::detect::extract::{parse_line_time, TimeContext};
use crate::detect::{DetectConfig, Detector, LineMatch};
use crate::incident::Incident;

/// Longest line read; the rest of a longer line is skipped.
const MAX_LINE_BYTES: usize = 1 << 20;
/// Lines per batch: incidents that fire are printed at the end of each batch.
const BATCH_LINES: usize = 4096;
/// Sample lines shown per incident in the text report.
const TEXT_SAMPLES: usize = 3;

/// Output format of `scan`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A readable report.
    Text,
    /// One JSON object per line.
    Json,
}

/// What `scan` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Emit {
    /// Incidents as they fire.
    Incidents,
    /// Every (line, rule) match, for tuning rules (like fail2ban-regex).
    Matches,
}

/// `logwarden scan [--rules FILE]… [--no-builtin] [--format text|json]
/// [--emit incidents|matches] PATH…`
#[derive(Debug, Clone, clap::Args)]
pub struct ScanArgs {
    /// A rule file to load (repeatable); beside the built-in pack unless --no-builtin.
    #[arg(long = "rules", value_name = "FILE")]
    pub rules: Vec<PathBuf>,
    /// Don't load the built-in rule pack.
    #[arg(long)]
    pub no_builtin: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Print incidents, or every (line, rule) match.
    #[arg(long, value_enum, default_value_t = Emit::Incidents)]
    pub emit: Emit,
    /// Log files, directories (their files are scanned), or `-` for stdin.
    #[arg(value_name = "PATH", required = true)]
    pub paths: Vec<PathBuf>,
}

#[derive(Default)]
struct Totals {
    files: u64,
    lines: u64,
    matches: u64,
    incidents: u64,
}

/// Runs `scan` and returns the process exit code (0 when the scan completed).
///
/// # Errors
/// Bad rules, unreadable paths, or a failed write to stdout.
pub fn run(args: ScanArgs) -> anyhow::Result<ExitCode> {
    let cfg = DetectConfig {
        builtin: !args.no_builtin,
        rules: args.rules.clone(),
        ..DetectConfig::default()
    };
    let registry = prometheus::Registry::new();
    let detector = Detector::try_new(&cfg, &registry).context("couldn't load the rules")?;
    let inputs = expand(&args.paths)?;
    let start = tokio::time::Instant::now();
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let mut totals = Totals::default();
    let progress = io::stderr().is_terminal();
    let ctx = TimeContext::now();
    for input in &inputs {
        let (name, reader): (String, Box<dyn Read>) = if input.as_os_str() == "-" {
            ("-".to_owned(), Box::new(io::stdin().lock()))
        } else {
            let f =
                File::open(input).with_context(|| format!("couldn't open {}", input.display()))?;
            (input.display().to_string(), Box::new(f))
        };
        totals.files += 1;
        scan_one(
            &detector,
            &name,
            reader,
            &args,
            ctx,
            &mut out,
            &mut totals,
            progress,
            start,
        )
        .with_context(|| format!("couldn't scan {name}"))?;
    }
    out.flush()?;
    let secs = start.elapsed().as_secs_f64();
    if progress {
        eprint!("\r\x1b[K");
    }
    eprintln!(
        "scanned {} lines in {} file(s): {} matches, {} incidents in {:.2}s ({:.0} lines/s)",
        totals.lines,
        totals.files,
        totals.matches,
        totals.incidents,
        secs,
        totals.lines as f64 / secs.max(1e-9)
    );
    Ok(ExitCode::SUCCESS)
}

/// Expands directories into their regular files (name order, hidden files skipped).
fn expand(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.as_os_str() != "-" && p.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("couldn't read directory {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| {
                    f.is_file()
                        && !f
                            .file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with('.'))
                })
                .collect();
            files.sort();
            out.extend(files);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn scan_one(
    detector: &Detector,
    name: &str,
    reader: Box<dyn Read + '_>,
    args: &ScanArgs,
    ctx: TimeContext,
    out: &mut impl Write,
    totals: &mut Totals,
    progress: bool,
    start: tokio::time::Instant,
) -> anyhow::Result<()> {
    let mut reader = BufReader::with_capacity(1 << 16, reader);
    let mut batch = detector.batch("scan");
    batch.set_stream_map(BTreeMap::from([("filename".to_owned(), name.to_owned())]));
    let mut buf = Vec::new();
    let mut last_ts = 0i64;
    let mut line_no = 0u64;
    let mut in_batch = 0usize;
    let mut write_err: Option<io::Error> = None;
    let mut pending: Vec<Incident> = Vec::new();
    let sink = std::sync::Mutex::new(&mut pending);
    let sink_fn = |i: Incident| sink.lock().unwrap_or_else(|e| e.into_inner()).push(i);
    loop {
        buf.clear();
        if !read_line_capped(&mut reader, &mut buf, MAX_LINE_BYTES)? {
            break;
        }
        line_no += 1;
        let mut line: &[u8] = &buf;
        while let Some((b'\n' | b'\r', rest)) = line.split_last() {
            line = rest;
        }
        let unwrapped = unwrap_docker_json(line);
        let (text, ts) = match &unwrapped {
            Some((log, ts)) => (log.as_bytes(), *ts),
            None => (line, None),
        };
        let ts = ts.or_else(|| {
            let head = &text[..text.len().min(256)];
            parse_line_time(&String::from_utf8_lossy(head), ctx)
        });
        if let Some(t) = ts {
            last_ts = t;
        }
        let emit_matches = args.emit == Emit::Matches;
        batch.line(last_ts, text, &mut |m: LineMatch<'_>| {
            totals.matches += 1;
            if emit_matches && write_err.is_none() {
                if let Err(e) = write_match(out, args.format, name, line_no, m) {
                    write_err = Some(e);
                }
            }
        });
        if let Some(e) = write_err.take() {
            return Err(e.into());
        }
        in_batch += 1;
        if in_batch >= BATCH_LINES {
            in_batch = 0;
            batch.flush(&sink_fn);
            emit_incidents(out, args, &sink, totals)?;
            if progress && line_no.is_multiple_of(BATCH_LINES as u64 * 64) {
                let secs = start.elapsed().as_secs_f64();
                eprint!(
                    "\r\x1b[K{name}: {line_no} lines ({:.0} lines/s)",
                    (totals.lines + line_no) as f64 / secs.max(1e-9)
                );
            }
        }
    }
    batch.flush(&sink_fn);
    emit_incidents(out, args, &sink, totals)?;
    totals.lines += line_no;
    Ok(())
}

fn emit_incidents(
    out: &mut impl Write,
    args: &ScanArgs,
    sink: &std::sync::Mutex<&mut Vec<Incident>>,
    totals: &mut Totals,
) -> io::Result<()> {
    let mut guard = sink.lock().unwrap_or_else(|e| e.into_inner());
    for inc in guard.drain(..) {
        totals.incidents += 1;
        if args.emit == Emit::Incidents {
            match args.format {
                Format::Json => {
                    serde_json::to_writer(&mut *out, &inc)?;
                    writeln!(out)?;
                }
                Format::Text => write_incident_text(out, &inc)?,
            }
        }
    }
    Ok(())
}

fn write_match(
    out: &mut impl Write,
    format: Format,
    source: &str,
    line: u64,
    m: LineMatch<'_>,
) -> io::Result<()> {
    match format {
        Format::Json => {
            let mut obj = serde_json::json!({
                "source": source,
                "line": line,
                "rule": m.rule,
                "key": m.key,
            });
            if m.allowlisted {
                obj["allowlisted"] = serde_json::Value::Bool(true);
            }
            serde_json::to_writer(&mut *out, &obj)?;
            writeln!(out)
        }
        Format::Text => {
            let allow = if m.allowlisted {
                " (allowlisted, not counted)"
            } else {
                ""
            };
            writeln!(
                out,
                "{source}:{line}: {} key={}{allow}",
                m.rule,
                m.key.unwrap_or("-")
            )
        }
    }
}

fn write_incident_text(out: &mut impl Write, inc: &Incident) -> io::Result<()> {
    let follow = if inc.follow_up {
        format!(" (follow-up #{})", inc.sequence)
    } else {
        String::new()
    };
    let key = if inc.key.is_empty() {
        "-".to_owned()
    } else {
        format!("{} ({})", inc.key, inc.key_kind)
    };
    writeln!(
        out,
        "[{}] {}{follow}: {}",
        inc.severity.as_str().to_uppercase(),
        inc.rule,
        inc.description
    )?;
    write!(out, "  key {key}, {} events", inc.count)?;
    if let Some(f) = &inc.distinct_field {
        write!(out, ", {} distinct {f}", inc.distinct_count)?;
    }
    writeln!(
        out,
        ", {} .. {} (threshold {})",
        inc.first_seen, inc.last_seen, inc.threshold
    )?;
    writeln!(out, "  logql: {}", inc.logql)?;
    let skip = inc.samples.len().saturating_sub(TEXT_SAMPLES);
    if skip > 0 {
        writeln!(out, "  … {skip} earlier sample line(s)")?;
    }
    for s in &inc.samples[skip..] {
        writeln!(out, "  > {}", s.line)?;
    }
    writeln!(out)
}

/// Reads one line (through `\n`) into `buf`, keeping at most `cap` bytes and skipping the rest.
/// Returns false at end of input.
fn read_line_capped(r: &mut impl BufRead, buf: &mut Vec<u8>, cap: usize) -> io::Result<bool> {
    let mut read_any = false;
    loop {
        let chunk = match r.fill_buf() {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if chunk.is_empty() {
            return Ok(read_any);
        }
        read_any = true;
        let (used, done) = match memchr::memchr(b'\n', chunk) {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        let room = cap.saturating_sub(buf.len());
        buf.extend_from_slice(&chunk[..used.min(room)]);
        r.consume(used);
        if done {
            return Ok(true);
        }
    }
}

/// Unwraps a Docker json-file line: returns the `log` text and the `time`, if it is one.
fn unwrap_docker_json(line: &[u8]) -> Option<(String, Option<i64>)> {
    if !line.starts_with(b"{\"log\":") {
        return None;
    }
    #[derive(serde::Deserialize)]
    struct DockerLine {
        log: String,
        #[serde(default)]
        time: Option<String>,
    }
    let d: DockerLine = serde_json::from_slice(line).ok()?;
    let ts = d
        .time
        .as_deref()
        .and_then(|t| parse_line_time(t, TimeContext { now_secs: 0 }));
    Some((d.log.trim_end_matches(['\n', '\r']).to_owned(), ts))
}
