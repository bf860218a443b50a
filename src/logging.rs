//! Log lines for people (`--log-format text`) and for machines (`--log-format json`), each
//! carrying the node's name and current term, so lines gathered from a whole cluster can be
//! told apart and ordered by term.
//!
//! The name and term are process-wide (a node is a process); the server
//! sets the name and keeps the term current.

use std::fmt::{self, Write as _};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::prelude::*;
use tracing_subscriber::registry::LookupSpan;

use crate::cli::LogFormat;

static NAME: OnceLock<String> = OnceLock::new();
static TERM: AtomicU64 = AtomicU64::new(0);

/// Records the node's name for every later line (the first call wins).
pub fn set_node(name: &str) {
    let _ = NAME.set(name.to_string());
}

/// Records the node's current term for every later line.
pub fn set_term(term: u64) {
    TERM.store(term, Ordering::Relaxed);
}

/// Installs the global subscriber: `RUST_LOG` (target=level,...) wins; otherwise `-v` turns on
/// peer traffic and the access log, `-vv` openraft's internals.
pub fn init(format: LogFormat, verbose: u8) {
    let default = match verbose {
        0 => "warn,raftd=info,openraft=off",
        1 => "warn,raftd=debug,openraft=warn",
        _ => "info,raftd=debug,openraft=debug",
    };
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| Targets::from_str(&v).ok())
        .unwrap_or_else(|| Targets::from_str(default).expect("valid default filter"));
    let ansi = format == LogFormat::Text && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .event_format(Lines { format });
    tracing_subscriber::registry().with(layer).with(filter).init();
}

/// The event formatter for both formats.
struct Lines {
    format: LogFormat,
}

impl<S, N> FormatEvent<S, N> for Lines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut w: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let mut time = String::new();
        SystemTime.format_time(&mut Writer::new(&mut time))?;
        let meta = event.metadata();
        let node = NAME.get().map_or("-", String::as_str);
        let term = TERM.load(Ordering::Relaxed);
        let mut spans = Vec::new();
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let fields = span
                    .extensions()
                    .get::<FormattedFields<N>>()
                    .map(|f| f.fields.clone())
                    .unwrap_or_default();
                spans.push((span.name(), fields));
            }
        }
        match self.format {
            LogFormat::Text => {
                write!(w, "{time} {:>5} node={node} term={term} ", meta.level())?;
                for (name, fields) in &spans {
                    if fields.is_empty() {
                        write!(w, "{name}:")?;
                    } else {
                        write!(w, "{name}{{{fields}}}:")?;
                    }
                }
                write!(w, "{}: ", meta.target())?;
                ctx.field_format().format_fields(w.by_ref(), event)?;
                writeln!(w)
            }
            LogFormat::Json => {
                let mut fields = Json(serde_json::Map::new());
                event.record(&mut fields);
                let mut line = serde_json::Map::new();
                line.insert("timestamp".into(), time.into());
                line.insert("level".into(), meta.level().as_str().into());
                line.insert("node".into(), node.into());
                line.insert("term".into(), term.into());
                line.insert("target".into(), meta.target().into());
                if let Some(message) = fields.0.remove("message") {
                    line.insert("message".into(), message);
                }
                line.insert("fields".into(), fields.0.into());
                if !spans.is_empty() {
                    let spans: Vec<serde_json::Value> = spans
                        .into_iter()
                        .map(|(name, fields)| serde_json::json!({"name": name, "fields": fields}))
                        .collect();
                    line.insert("spans".into(), spans.into());
                }
                let text = serde_json::to_string(&line).map_err(|_| fmt::Error)?;
                writeln!(w, "{text}")
            }
        }
    }
}

/// Collects an event's fields as JSON values.
struct Json(serde_json::Map<String, serde_json::Value>);

impl Visit for Json {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let mut text = String::new();
        let _ = write!(text, "{value:?}");
        self.0.insert(field.name().into(), text.into());
    }
}
