//! The replicated vocabulary: what a log entry asks the state machine to do, and what it answered.
//!
//! Commands are complete and deterministic: the leader fills in everything that varies (mtime,
//! request id), so applying the same entry on any node, or again after a crash, yields the same
//! tree. Large contents never travel as one entry: they are cut into `file:chunk` entries that
//! stage an upload, and a `file:commit` moves the assembled file into place.
//!
//! A change to part of a file travels as what changed: a `file:patch` carries the bytes
//! written at their offsets, the ranges that became zeros (kept as holes) and the new length,
//! so a one-byte change to a large file is a one-byte entry and a sparse extension costs
//! nothing. A patch too large for one entry stages its bytes as chunks, and its `file:commit`
//! carries the layout that places them.

use base64::Engine as _;
use serde::de::{self, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A client-chosen id that lets the state machine recognise a retried command.
pub type RequestId = u64;

/// File contents inside a command. UTF-8 stays readable in the log (`"content":"BAR"`); any
/// other bytes are base64 under `content_b64`, so every replica gets the exact bytes.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Data(pub Vec<u8>);

impl std::fmt::Debug for Data {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Data({} bytes)", self.0.len())
    }
}

impl Serialize for Data {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(1))?;
        match std::str::from_utf8(&self.0) {
            Ok(text) => map.serialize_entry("content", text)?,
            Err(_) => map.serialize_entry(
                "content_b64",
                &base64::engine::general_purpose::STANDARD.encode(&self.0),
            )?,
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Data {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct DataVisitor;
        impl<'de> Visitor<'de> for DataVisitor {
            type Value = Data;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map with `content` or `content_b64`")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Data, A::Error> {
                let mut data = None;
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "content" => data = Some(map.next_value::<String>()?.into_bytes()),
                        "content_b64" => {
                            let text = map.next_value::<String>()?;
                            let bytes = base64::engine::general_purpose::STANDARD
                                .decode(text)
                                .map_err(de::Error::custom)?;
                            data = Some(bytes);
                        }
                        _ => {
                            map.next_value::<de::IgnoredAny>()?;
                        }
                    }
                }
                data.map(Data).ok_or_else(|| de::Error::missing_field("content"))
            }
        }
        d.deserialize_map(DataVisitor)
    }
}

/// Replace a whole file (creating parent directories).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Write {
    /// Relative path inside the replicated tree.
    pub filename: String,
    /// The new contents.
    #[serde(flatten)]
    pub data: Data,
    /// Modification time, nanoseconds since the Unix epoch, chosen by the proposer.
    pub mtime: u64,
    /// Retry de-duplication id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub req: Option<RequestId>,
    /// Apply only if the file exists: a FUSE writer of a file that existed when it opened must
    /// not re-create it after a delete or rename elsewhere (it fails with not-found instead).
    #[serde(default, skip_serializing_if = "is_false")]
    pub existing: bool,
}

fn is_false(b: &bool) -> bool {
    !b
}

/// Remove a file (not a directory).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delete {
    /// Relative path inside the replicated tree.
    pub filename: String,
    /// Retry de-duplication id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub req: Option<RequestId>,
}

/// Create or remove a directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dir {
    /// Relative path inside the replicated tree.
    pub dirname: String,
    /// Modification time for a created directory, nanoseconds since the epoch.
    #[serde(default)]
    pub mtime: u64,
    /// Retry de-duplication id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub req: Option<RequestId>,
}

/// Rename a file or directory, replacing the target where POSIX rename(2) allows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rename {
    /// Existing relative path.
    pub from: String,
    /// New relative path.
    pub to: String,
    /// Retry de-duplication id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub req: Option<RequestId>,
}

/// Set a file's or directory's times (utimes, `touch` on an existing file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Touch {
    /// Relative path inside the replicated tree.
    pub filename: String,
    /// New modification time, nanoseconds since the epoch; `None` leaves it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime: Option<u64>,
    /// New access time (of a file), nanoseconds since the epoch; `None` leaves it. Access
    /// times change only this way: reads never move them (noatime).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub atime: Option<u64>,
}

/// Stage one piece of a large file under an upload id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    /// Upload this piece belongs to.
    pub upload: u64,
    /// Position of the piece in the file, from 0.
    pub seq: u32,
    /// The bytes of this piece.
    #[serde(flatten)]
    pub data: Data,
}

/// Move a staged upload into place as one file (or drop it, with `filename: None`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commit {
    /// Upload to assemble.
    pub upload: u64,
    /// Destination; `None` aborts the upload.
    pub filename: Option<String>,
    /// Modification time, nanoseconds since the epoch.
    #[serde(default)]
    pub mtime: u64,
    /// Retry de-duplication id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub req: Option<RequestId>,
    /// As [`Write::existing`].
    #[serde(default, skip_serializing_if = "is_false")]
    pub existing: bool,
    /// Place the staged bytes into the file (a large `file:patch`) instead of replacing it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch: Option<StagedPatch>,
}

/// `[offset, length]`: a byte range of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span(pub u64, pub u64);

impl Span {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.0.saturating_add(self.1)
    }
}

/// Bytes written at an offset, inside a [`Patch`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Piece {
    /// Where the bytes go.
    pub offset: u64,
    /// The bytes.
    #[serde(flatten)]
    pub data: Data,
}

/// The shape of a change to part of a file, applied in this order: cut to `cut` (a truncate
/// since the last commit: what lay past it reads as zeros), set the length to `size`, turn
/// the `zeros` ranges into holes, then write the bytes. The same result however often it is
/// applied, and every replica keeps the holes.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Layout {
    /// Shortest length the file had since the last commit, if it was cut.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cut: Option<u64>,
    /// Length afterwards.
    pub size: u64,
    /// Ranges that read as zeros afterwards (punched, not written).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub zeros: Vec<Span>,
}

/// Change part of a file (creating it, and its parents, if it does not exist).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Patch {
    /// Relative path inside the replicated tree.
    pub filename: String,
    /// Cut, length and zeroed ranges.
    #[serde(flatten)]
    pub layout: Layout,
    /// Bytes written, at their offsets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub writes: Vec<Piece>,
    /// Modification time, nanoseconds since the epoch.
    pub mtime: u64,
    /// Retry de-duplication id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub req: Option<RequestId>,
    /// As [`Write::existing`].
    #[serde(default, skip_serializing_if = "is_false")]
    pub existing: bool,
}

/// How a `file:commit` places staged bytes into the existing file instead of replacing it:
/// the staged pieces, concatenated, fill `spans` in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedPatch {
    /// Cut, length and zeroed ranges.
    #[serde(flatten)]
    pub layout: Layout,
    /// Where the staged bytes go.
    pub spans: Vec<Span>,
}

/// Several commands in one entry, applied in order, each with its own outcome: the leader
/// groups concurrent small writes this way so they share one append, one fsync and one place
/// in replication (see `node::batch`). In the log each keeps its name:
/// `{"commands":[{"file:write":{…}},{"file:delete":{…}}]}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// The commands, none of them a batch.
    pub commands: Vec<Command>,
}

/// One command of a batch, serialized as `{name: body}`.
struct Named<'a>(&'a Command);

impl Serialize for Named<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(1))?;
        let name = self.0.name();
        match self.0 {
            Command::Write(c) => map.serialize_entry(name, c)?,
            Command::Delete(c) => map.serialize_entry(name, c)?,
            Command::Mkdir(c) | Command::Rmdir(c) => map.serialize_entry(name, c)?,
            Command::Rename(c) => map.serialize_entry(name, c)?,
            Command::Touch(c) => map.serialize_entry(name, c)?,
            Command::Chunk(c) => map.serialize_entry(name, c)?,
            Command::Commit(c) => map.serialize_entry(name, c)?,
            Command::Patch(c) => map.serialize_entry(name, c)?,
            Command::Batch(c) => map.serialize_entry(name, c)?,
        }
        map.end()
    }
}

impl Serialize for Batch {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(1))?;
        let named: Vec<Named<'_>> = self.commands.iter().map(Named).collect();
        map.serialize_entry("commands", &named)?;
        map.end()
    }
}

impl<'de> Deserialize<'de> for Batch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Repr {
            commands: Vec<std::collections::BTreeMap<String, serde_json::Value>>,
        }
        let repr = Repr::deserialize(d)?;
        let commands = repr
            .commands
            .into_iter()
            .map(|named| {
                let mut entries = named.into_iter();
                let (Some((name, body)), None) = (entries.next(), entries.next()) else {
                    return Err(de::Error::custom("a batched command is one {name: body} pair"));
                };
                if name == "file:batch" {
                    return Err(de::Error::custom("a batch inside a batch"));
                }
                let body = body.to_string();
                Command::from_name_json(&name, &body)
                    .ok_or_else(|| de::Error::custom(format!("unknown command {name:?} in a batch")))?
                    .map_err(de::Error::custom)
            })
            .collect::<Result<Vec<_>, D::Error>>()?;
        Ok(Batch { commands })
    }
}

/// One replicated file operation; the variant decides the log line's command name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// `file:write`
    Write(Write),
    /// `file:delete`
    Delete(Delete),
    /// `file:mkdir`
    Mkdir(Dir),
    /// `file:rmdir`
    Rmdir(Dir),
    /// `file:rename`
    Rename(Rename),
    /// `file:touch`
    Touch(Touch),
    /// `file:chunk`
    Chunk(Chunk),
    /// `file:commit`
    Commit(Commit),
    /// `file:patch`
    Patch(Patch),
    /// `file:batch`
    Batch(Batch),
}

impl Command {
    /// The name written in the log line; every file operation starts with `file:`.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Write(_) => "file:write",
            Command::Delete(_) => "file:delete",
            Command::Mkdir(_) => "file:mkdir",
            Command::Rmdir(_) => "file:rmdir",
            Command::Rename(_) => "file:rename",
            Command::Touch(_) => "file:touch",
            Command::Chunk(_) => "file:chunk",
            Command::Commit(_) => "file:commit",
            Command::Patch(_) => "file:patch",
            Command::Batch(_) => "file:batch",
        }
    }

    /// The request id, if the proposer set one.
    pub fn req(&self) -> Option<RequestId> {
        match self {
            Command::Write(c) => c.req,
            Command::Delete(c) => c.req,
            Command::Mkdir(c) | Command::Rmdir(c) => c.req,
            Command::Rename(c) => c.req,
            Command::Commit(c) => c.req,
            Command::Patch(c) => c.req,
            Command::Touch(_) | Command::Chunk(_) | Command::Batch(_) => None,
        }
    }

    /// The time the proposer wrote into the command (nanoseconds since the epoch), if any: the
    /// clock of the request-id table, which must be read from the log, not from a local clock.
    pub fn time(&self) -> Option<u64> {
        match self {
            Command::Write(c) => Some(c.mtime),
            Command::Mkdir(c) | Command::Rmdir(c) => Some(c.mtime),
            Command::Touch(c) => c.mtime.or(c.atime),
            Command::Commit(c) => Some(c.mtime),
            Command::Patch(c) => Some(c.mtime),
            Command::Delete(_) | Command::Rename(_) | Command::Chunk(_) | Command::Batch(_) => None,
        }
    }

    /// Sets the request id on commands that carry one.
    pub fn set_req(&mut self, id: RequestId) {
        match self {
            Command::Write(c) => c.req = Some(id),
            Command::Delete(c) => c.req = Some(id),
            Command::Mkdir(c) | Command::Rmdir(c) => c.req = Some(id),
            Command::Rename(c) => c.req = Some(id),
            Command::Commit(c) => c.req = Some(id),
            Command::Patch(c) => c.req = Some(id),
            Command::Touch(_) | Command::Chunk(_) | Command::Batch(_) => {}
        }
    }

    /// Every name the command refers to (`from` and `to` for a rename).
    pub fn names(&self) -> Vec<&str> {
        match self {
            Command::Write(c) => vec![&c.filename],
            Command::Patch(c) => vec![&c.filename],
            Command::Touch(c) => vec![&c.filename],
            Command::Delete(c) => vec![&c.filename],
            Command::Mkdir(c) | Command::Rmdir(c) => vec![&c.dirname],
            Command::Rename(c) => vec![&c.from, &c.to],
            Command::Commit(c) => c.filename.iter().map(String::as_str).collect(),
            Command::Chunk(_) => vec![],
            Command::Batch(b) => b.commands.iter().flat_map(Command::names).collect(),
        }
    }

    /// Whether applying it can take more space (everything but removals and aborts).
    pub fn adds_data(&self) -> bool {
        match self {
            Command::Delete(_) | Command::Rmdir(_) | Command::Rename(_) | Command::Touch(_) => false,
            Command::Commit(c) => c.filename.is_some(),
            Command::Write(_) | Command::Mkdir(_) | Command::Chunk(_) | Command::Patch(_) => true,
            Command::Batch(b) => b.commands.iter().any(Command::adds_data),
        }
    }

    /// Bytes of file content the command carries.
    pub fn data_len(&self) -> usize {
        match self {
            Command::Write(c) => c.data.0.len(),
            Command::Chunk(c) => c.data.0.len(),
            Command::Patch(c) => c.writes.iter().map(|w| w.data.0.len()).sum(),
            Command::Batch(b) => b.commands.iter().map(Command::data_len).sum(),
            _ => 0,
        }
    }

    /// The commands this one carries: a batch's, or itself.
    pub fn commands(&self) -> Vec<&Command> {
        match self {
            Command::Batch(b) => b.commands.iter().collect(),
            other => vec![other],
        }
    }

    /// The command's body as the JSON object shown after its name in the log.
    pub fn body_json(&self) -> serde_json::Result<String> {
        match self {
            Command::Write(c) => serde_json::to_string(c),
            Command::Delete(c) => serde_json::to_string(c),
            Command::Mkdir(c) | Command::Rmdir(c) => serde_json::to_string(c),
            Command::Rename(c) => serde_json::to_string(c),
            Command::Touch(c) => serde_json::to_string(c),
            Command::Chunk(c) => serde_json::to_string(c),
            Command::Commit(c) => serde_json::to_string(c),
            Command::Patch(c) => serde_json::to_string(c),
            Command::Batch(c) => serde_json::to_string(c),
        }
    }

    /// Parses a log line's name and JSON body back into a command; `None` for an unknown name.
    pub fn from_name_json(name: &str, json: &str) -> Option<serde_json::Result<Command>> {
        Some(match name {
            "file:write" => serde_json::from_str(json).map(Command::Write),
            "file:delete" => serde_json::from_str(json).map(Command::Delete),
            "file:mkdir" => serde_json::from_str(json).map(Command::Mkdir),
            "file:rmdir" => serde_json::from_str(json).map(Command::Rmdir),
            "file:rename" => serde_json::from_str(json).map(Command::Rename),
            "file:touch" => serde_json::from_str(json).map(Command::Touch),
            "file:chunk" => serde_json::from_str(json).map(Command::Chunk),
            "file:commit" => serde_json::from_str(json).map(Command::Commit),
            "file:patch" => serde_json::from_str(json).map(Command::Patch),
            "file:batch" => serde_json::from_str(json).map(Command::Batch),
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_stays_readable_in_json() {
        let c = Command::Write(Write {
            filename: "foo".into(),
            data: Data(b"BAR".to_vec()),
            mtime: 7,
            req: None,
            existing: false,
        });
        assert_eq!(c.name(), "file:write");
        assert_eq!(
            c.body_json().unwrap(),
            r#"{"filename":"foo","content":"BAR","mtime":7}"#
        );
    }

    #[test]
    fn binary_round_trips_through_base64() {
        let bytes: Vec<u8> = (0..=255u8).collect();
        let c = Command::Write(Write {
            filename: "bin".into(),
            data: Data(bytes.clone()),
            mtime: 0,
            req: Some(3),
            existing: false,
        });
        let json = c.body_json().unwrap();
        assert!(json.contains("content_b64"), "{json}");
        let back = Command::from_name_json("file:write", &json).unwrap().unwrap();
        assert_eq!(back, c);
        let wire = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<Command>(&wire).unwrap(), c);
    }

    #[test]
    fn a_patch_reads_as_what_changed() {
        let c = Command::Patch(Patch {
            filename: "big".into(),
            layout: Layout {
                cut: Some(10),
                size: (1 << 31) + 2,
                zeros: vec![Span(0, 4096)],
            },
            writes: vec![Piece {
                offset: (1 << 31) + 1,
                data: Data(b"x".to_vec()),
            }],
            mtime: 7,
            req: Some(1),
            existing: true,
        });
        let json = c.body_json().unwrap();
        assert_eq!(
            json,
            r#"{"filename":"big","cut":10,"size":2147483650,"zeros":[[0,4096]],"writes":[{"offset":2147483649,"content":"x"}],"mtime":7,"req":1,"existing":true}"#
        );
        assert_eq!(Command::from_name_json("file:patch", &json).unwrap().unwrap(), c);
        assert_eq!(c.data_len(), 1);
    }

    #[test]
    fn a_batch_keeps_each_command_readable() {
        let write = Command::Write(Write {
            filename: "a".into(),
            data: Data(b"1".to_vec()),
            mtime: 2,
            req: Some(3),
            existing: false,
        });
        let delete = Command::Delete(Delete {
            filename: "b".into(),
            req: None,
        });
        let batch = Command::Batch(Batch {
            commands: vec![write.clone(), delete.clone()],
        });
        let json = batch.body_json().unwrap();
        assert_eq!(
            json,
            r#"{"commands":[{"file:write":{"filename":"a","content":"1","mtime":2,"req":3}},{"file:delete":{"filename":"b"}}]}"#
        );
        assert_eq!(
            Command::from_name_json("file:batch", &json).unwrap().unwrap(),
            batch
        );
        let wire = serde_json::to_string(&batch).unwrap();
        assert_eq!(serde_json::from_str::<Command>(&wire).unwrap(), batch);
        assert_eq!(batch.names(), ["a", "b"]);
        assert_eq!(batch.commands(), [&write, &delete]);
        let nested = format!(r#"{{"commands":[{{"file:batch":{json}}}]}}"#);
        assert!(Command::from_name_json("file:batch", &nested).unwrap().is_err());
        let two = r#"{"commands":[{"file:delete":{"filename":"b"},"file:rmdir":{"dirname":"c"}}]}"#;
        assert!(Command::from_name_json("file:batch", two).unwrap().is_err());
    }

    #[test]
    fn unknown_names_are_reported() {
        assert!(Command::from_name_json("file:nope", "{}").is_none());
    }
}
