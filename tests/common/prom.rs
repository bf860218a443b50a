//! A strict parser of the Prometheus / OpenMetrics text exposition format, for checking what
//! `/metrics` serves: every sample belongs to a family declared by `# TYPE` before it, names
//! and labels follow the grammar, values are numbers, and the text ends with `# EOF`.

use std::collections::{BTreeMap, HashMap};

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed exposition.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Family name → declared type.
    pub types: HashMap<String, String>,
    pub samples: Vec<Sample>,
}

impl Metrics {
    /// The value of the sample `name` whose labels include all of `labels`, if exactly one.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect();
        match found.as_slice() {
            [one] => Some(one.value),
            _ => None,
        }
    }

    /// Every sample named `name`.
    pub fn all(&self, name: &str) -> Vec<&Sample> {
        self.samples.iter().filter(|s| s.name == name).collect()
    }
}

fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// The family a sample belongs to: its name less a suffix its type adds.
fn family_of<'a>(name: &'a str, types: &HashMap<String, String>) -> Option<&'a str> {
    if types.contains_key(name) {
        return Some(name);
    }
    for suffix in ["_total", "_created", "_bucket", "_sum", "_count", "_info"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if types.contains_key(base) {
                return Some(base);
            }
        }
    }
    None
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => s.parse::<f64>().map_err(|_| format!("bad value {s:?}")),
    }
}

fn parse_labels(s: &str) -> Result<BTreeMap<String, String>, String> {
    let mut labels = BTreeMap::new();
    let mut rest = s;
    while !rest.is_empty() {
        let (key, after) = rest
            .split_once("=\"")
            .ok_or_else(|| format!("bad labels {s:?}"))?;
        if !is_name(key) {
            return Err(format!("bad label name {key:?}"));
        }
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => return Err(format!("bad escape in {s:?}")),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => return Err(format!("unterminated label value in {s:?}")),
            }
        };
        if labels.insert(key.to_string(), value).is_some() {
            return Err(format!("label {key} repeated"));
        }
        rest = &after[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
    Ok(labels)
}

/// Parses `text`, failing on anything outside the format.
pub fn parse(text: &str) -> Result<Metrics, String> {
    let mut m = Metrics::default();
    let mut saw_eof = false;
    for line in text.lines() {
        if saw_eof {
            return Err(format!("line after # EOF: {line:?}"));
        }
        if line == "# EOF" {
            saw_eof = true;
            continue;
        }
        if let Some(meta) = line.strip_prefix("# ") {
            let mut parts = meta.splitn(3, ' ');
            let (kind, name) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            if !is_name(name) {
                return Err(format!("bad metric name in {line:?}"));
            }
            match kind {
                "TYPE" => {
                    let t = parts.next().unwrap_or("");
                    if ![
                        "counter",
                        "gauge",
                        "histogram",
                        "summary",
                        "info",
                        "stateset",
                        "unknown",
                    ]
                    .contains(&t)
                    {
                        return Err(format!("bad type in {line:?}"));
                    }
                    if m.types.insert(name.to_string(), t.to_string()).is_some() {
                        return Err(format!("{name} declared twice"));
                    }
                }
                "HELP" | "UNIT" => {}
                _ => return Err(format!("unknown comment {line:?}")),
            }
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .ok_or_else(|| format!("no value in {line:?}"))?;
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let inner = rest
                    .strip_suffix('}')
                    .ok_or_else(|| format!("unclosed labels in {line:?}"))?;
                (name, parse_labels(inner)?)
            }
            None => (series, BTreeMap::new()),
        };
        if !is_name(name) {
            return Err(format!("bad sample name in {line:?}"));
        }
        if family_of(name, &m.types).is_none() {
            return Err(format!("sample {name} has no # TYPE before it"));
        }
        m.samples.push(Sample {
            name: name.to_string(),
            labels,
            value: parse_value(value)?,
        });
    }
    if !saw_eof {
        return Err("no # EOF at the end".into());
    }
    Ok(m)
}

#[test]
fn the_parser_refuses_what_is_not_the_format() {
    let good = "# TYPE a counter\na_total{x=\"1\",y=\"q\\\"\"} 3\n# TYPE b gauge\nb 1.5\n# EOF\n";
    let m = parse(good).unwrap();
    assert_eq!(m.get("a_total", &[("y", "q\"")]), Some(3.0));
    assert_eq!(m.get("b", &[]), Some(1.5));
    for bad in [
        "a 1\n# EOF\n",                      // no TYPE
        "# TYPE a gauge\na one\n# EOF\n",    // not a number
        "# TYPE a gauge\na{x=1} 1\n# EOF\n", // unquoted label
        "# TYPE a gauge\na 1\n",             // no EOF
        "# TYPE 1a gauge\n1a 1\n# EOF\n",    // bad name
    ] {
        assert!(parse(bad).is_err(), "accepted {bad:?}");
    }
}
