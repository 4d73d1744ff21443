//! Loki's JSON push formats, read with serde into the borrowed view.
//!
//! v1 (`/loki/api/v1/push`): `{"streams":[{"stream":{"k":"v"},"values":[["<ns>","line",{..}]]}]}`
//! where the timestamp is a *string* of integer nanoseconds. Legacy v0 (`/api/prom/push`):
//! `{"streams":[{"labels":"{k=\"v\"}","entries":[{"ts":"<RFC 3339>","line":"..."}]}]}`.
//! Strings without escapes borrow from the body.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::{parse_labels, DecodeError, EntryView, Labels, PushView, StreamView};

/// A JSON string that borrows from the input when it has no escapes.
#[derive(Deserialize)]
#[serde(transparent)]
struct CowStr<'a>(#[serde(borrow)] Cow<'a, str>);

#[derive(Deserialize)]
struct V1Push<'a> {
    #[serde(borrow, default)]
    streams: Option<Vec<V1Stream<'a>>>,
}

#[derive(Deserialize)]
struct V1Stream<'a> {
    #[serde(borrow, default)]
    stream: Option<StringMap<'a>>,
    #[serde(borrow, default)]
    values: Option<Vec<Option<V1Entry<'a>>>>,
}

/// A flat JSON object of string values, kept in order of appearance.
struct StringMap<'a>(Vec<(Cow<'a, str>, Cow<'a, str>)>);

impl<'de: 'a, 'a> Deserialize<'de> for StringMap<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = StringMap<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of string values")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut m: M) -> Result<Self::Value, M::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = m.next_entry::<CowStr<'a>, CowStr<'a>>()? {
                    out.push((k.0, v.0));
                }
                Ok(StringMap(out))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// `["<ns>", "line"]` or `["<ns>", "line", {"k":"v"}]`.
struct V1Entry<'a> {
    ts: Cow<'a, str>,
    line: Cow<'a, str>,
    metadata: Option<StringMap<'a>>,
}

impl<'de: 'a, 'a> Deserialize<'de> for V1Entry<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = V1Entry<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"an entry ["<unix ns>", "<line>", {<metadata>}]"#)
            }
            fn visit_seq<S: SeqAccess<'de>>(self, mut s: S) -> Result<Self::Value, S::Error> {
                let ts = s
                    .next_element::<CowStr<'a>>()?
                    .ok_or_else(|| de::Error::invalid_length(0, &self))?;
                let line = s
                    .next_element::<CowStr<'a>>()?
                    .ok_or_else(|| de::Error::invalid_length(1, &self))?;
                let metadata = s.next_element::<Option<StringMap<'a>>>()?.flatten();
                // Loki ignores anything after the third element; so do we, without failing.
                while s.next_element::<de::IgnoredAny>()?.is_some() {}
                Ok(V1Entry {
                    ts: ts.0,
                    line: line.0,
                    metadata,
                })
            }
        }
        d.deserialize_seq(V(std::marker::PhantomData))
    }
}

fn cow_str_to_bytes(s: Cow<'_, str>) -> Cow<'_, [u8]> {
    match s {
        Cow::Borrowed(b) => Cow::Borrowed(b.as_bytes()),
        Cow::Owned(o) => Cow::Owned(o.into_bytes()),
    }
}

pub(super) fn parse_v1(buf: &[u8]) -> Result<PushView<'_>, DecodeError> {
    let push: V1Push<'_> = serde_json::from_slice(buf).map_err(DecodeError::Json)?;
    let mut streams = Vec::new();
    for s in push.streams.unwrap_or_default() {
        let labels = Labels::from_pairs(s.stream.map(|m| m.0).unwrap_or_default());
        let mut entries = Vec::new();
        for e in s.values.unwrap_or_default().into_iter().flatten() {
            let timestamp_ns = e.ts.parse::<i64>().map_err(|_| {
                DecodeError::Timestamp(format!("{:?} is not integer nanoseconds", e.ts))
            })?;
            let structured_metadata = e
                .metadata
                .map(|m| {
                    m.0.into_iter()
                        .map(|(k, v)| (k, cow_str_to_bytes(v)))
                        .collect()
                })
                .unwrap_or_default();
            entries.push(EntryView {
                timestamp_ns,
                line: cow_str_to_bytes(e.line),
                structured_metadata,
            });
        }
        streams.push(StreamView { labels, entries });
    }
    Ok(PushView { streams })
}

#[derive(Deserialize)]
struct LegacyPush<'a> {
    #[serde(borrow, default)]
    streams: Option<Vec<LegacyStream<'a>>>,
}

#[derive(Deserialize)]
struct LegacyStream<'a> {
    #[serde(borrow)]
    labels: CowStr<'a>,
    #[serde(borrow, default)]
    entries: Option<Vec<LegacyEntry<'a>>>,
}

#[derive(Deserialize)]
struct LegacyEntry<'a> {
    #[serde(borrow, alias = "timestamp")]
    ts: CowStr<'a>,
    #[serde(borrow)]
    line: CowStr<'a>,
    #[serde(borrow, default, rename = "structuredMetadata")]
    structured_metadata: Option<StringMap<'a>>,
}

pub(super) fn parse_legacy(buf: &[u8]) -> Result<PushView<'_>, DecodeError> {
    let push: LegacyPush<'_> = serde_json::from_slice(buf).map_err(DecodeError::Json)?;
    let mut streams = Vec::new();
    for s in push.streams.unwrap_or_default() {
        // Labels must outlive the view: a label string with escapes yields owned values.
        let labels = match s.labels.0 {
            Cow::Borrowed(b) => parse_labels(b)?,
            Cow::Owned(o) => parse_labels(&o)?.into_owned(),
        };
        let mut entries = Vec::new();
        for e in s.entries.unwrap_or_default() {
            let ts = chrono::DateTime::parse_from_rfc3339(&e.ts.0)
                .map_err(|err| DecodeError::Timestamp(format!("{:?}: {err}", e.ts.0)))?;
            let timestamp_ns = ts.timestamp_nanos_opt().unwrap_or(0);
            let structured_metadata = e
                .structured_metadata
                .map(|m| {
                    m.0.into_iter()
                        .map(|(k, v)| (k, cow_str_to_bytes(v)))
                        .collect()
                })
                .unwrap_or_default();
            entries.push(EntryView {
                timestamp_ns,
                line: cow_str_to_bytes(e.line.0),
                structured_metadata,
            });
        }
        streams.push(StreamView { labels, entries });
    }
    Ok(PushView { streams })
}
