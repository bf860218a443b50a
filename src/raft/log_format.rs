//! The log line codec: one entry ⇄ one line of text, with no I/O.
//!
//! ```text
//! 28b5397b 0000000000000003 0000000000000002 file:write {"filename":"foo","content":"BAR","mtime":…}
//! ```
//!
//! Fields: CRC-32 (IEEE) as 8 hex digits, index and term as 16 hex digits, the command name (no
//! spaces; `raft:` for openraft's own entries, `file:` for file operations) and the command as
//! JSON. The checksum covers everything after it — from the index through the trailing newline —
//! as go-raft's text log did, so a line that was cut short by a crash never verifies.
//! JSON escapes newlines, so a line never contains one except at its end.

use std::fmt::Write as _;

use super::command::Command;
use super::{Entry, LogId};
use openraft::EntryPayload;

/// Name of the blank entry a new leader appends.
pub const NOP: &str = "raft:nop";
/// Name of a membership change entry.
pub const CONFIG: &str = "raft:config";

/// Bytes before the checksummed part: 8 hex digits and a space.
const CRC_PREFIX: usize = 9;
/// Bytes of `index term ` after the checksum.
const IDS_LEN: usize = 16 + 1 + 16 + 1;

/// Why a line could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The line ends without a newline: it was being written when the process stopped.
    #[error("line is not terminated")]
    Unterminated,
    /// The checksum does not match the contents.
    #[error("checksum mismatch (stored {stored:08x}, computed {computed:08x})")]
    Checksum {
        /// The checksum written in the line.
        stored: u32,
        /// The checksum of what is there now.
        computed: u32,
    },
    /// The line verified but does not have the expected shape.
    #[error("malformed entry: {0}")]
    Malformed(String),
}

/// The identity of a line, available after verifying only the checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Log index.
    pub index: u64,
    /// Term of the leader that created the entry.
    pub term: u64,
}

/// Appends the line for `entry`, newline included, to `out`.
pub fn encode(entry: &Entry, out: &mut Vec<u8>) -> serde_json::Result<()> {
    let (name, json) = match &entry.payload {
        EntryPayload::Blank => (NOP, "{}".to_string()),
        EntryPayload::Normal(cmd) => (cmd.name(), cmd.body_json()?),
        EntryPayload::Membership(m) => (CONFIG, serde_json::to_string(m)?),
    };
    let mut body = String::with_capacity(IDS_LEN + name.len() + json.len() + 2);
    let _ = writeln!(
        body,
        "{:016x} {:016x} {name} {json}",
        entry.log_id.index, entry.log_id.leader_id.term
    );
    let crc = crc32fast::hash(body.as_bytes());
    out.extend_from_slice(format!("{crc:08x} ").as_bytes());
    out.extend_from_slice(body.as_bytes());
    Ok(())
}

/// Verifies a line's checksum and reads its index and term.
pub fn decode_header(line: &[u8]) -> Result<Header, DecodeError> {
    if line.last() != Some(&b'\n') {
        return Err(DecodeError::Unterminated);
    }
    if line.len() < CRC_PREFIX + IDS_LEN || line[8] != b' ' {
        return Err(DecodeError::Malformed("line too short".into()));
    }
    let stored = hex(&line[..8])? as u32;
    let computed = crc32fast::hash(&line[CRC_PREFIX..]);
    if stored != computed {
        return Err(DecodeError::Checksum { stored, computed });
    }
    let ids = &line[CRC_PREFIX..CRC_PREFIX + IDS_LEN];
    if ids[16] != b' ' || ids[33] != b' ' {
        return Err(DecodeError::Malformed(
            "index and term must be 16 hex digits".into(),
        ));
    }
    Ok(Header {
        index: hex(&ids[..16])?,
        term: hex(&ids[17..33])?,
    })
}

/// Verifies and decodes a whole line.
pub fn decode(line: &[u8]) -> Result<Entry, DecodeError> {
    let header = decode_header(line)?;
    let rest = std::str::from_utf8(&line[CRC_PREFIX + IDS_LEN..line.len() - 1])
        .map_err(|_| DecodeError::Malformed("not UTF-8".into()))?;
    let (name, json) = rest
        .split_once(' ')
        .ok_or_else(|| DecodeError::Malformed("missing command name".into()))?;
    let bad = |e: serde_json::Error| DecodeError::Malformed(format!("{name}: {e}"));
    let payload = match name {
        NOP => EntryPayload::Blank,
        CONFIG => EntryPayload::Membership(serde_json::from_str(json).map_err(bad)?),
        _ => match Command::from_name_json(name, json) {
            Some(cmd) => EntryPayload::Normal(cmd.map_err(bad)?),
            None => return Err(DecodeError::Malformed(format!("unknown command {name:?}"))),
        },
    };
    Ok(Entry {
        log_id: LogId::new(openraft::CommittedLeaderId::new(header.term, 0), header.index),
        payload,
    })
}

fn hex(digits: &[u8]) -> Result<u64, DecodeError> {
    let text = std::str::from_utf8(digits).map_err(|_| DecodeError::Malformed("bad hex".into()))?;
    u64::from_str_radix(text, 16).map_err(|_| DecodeError::Malformed(format!("bad hex {text:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::command::{Data, Write};

    fn write_entry(term: u64, index: u64, content: &[u8]) -> Entry {
        Entry {
            log_id: LogId::new(openraft::CommittedLeaderId::new(term, 0), index),
            payload: EntryPayload::Normal(Command::Write(Write {
                filename: "foo".into(),
                data: Data(content.to_vec()),
                mtime: 1,
                req: None,
                existing: false,
            })),
        }
    }

    #[test]
    fn line_matches_the_documented_shape() {
        let mut out = Vec::new();
        encode(&write_entry(2, 3, b"BAR"), &mut out).unwrap();
        let line = String::from_utf8(out.clone()).unwrap();
        let expected_body =
            "0000000000000003 0000000000000002 file:write {\"filename\":\"foo\",\"content\":\"BAR\",\"mtime\":1}\n";
        assert_eq!(&line[9..], expected_body);
        assert_eq!(
            &line[..8],
            format!("{:08x}", crc32fast::hash(expected_body.as_bytes()))
        );
        assert_eq!(decode(&out).unwrap(), write_entry(2, 3, b"BAR"));
    }

    #[test]
    fn go_raft_checksum_example() {
        // The checksum go-raft would print for this body: CRC-32/IEEE of index..newline.
        let body =
            "0000000000000003 0000000000000002 file:write {\"filename\":\"foo\",\"content\":\"BAR\"}\n";
        assert_eq!(format!("{:08x}", crc32fast::hash(body.as_bytes())), "28b5397b");
    }

    #[test]
    fn blank_and_binary_entries_round_trip() {
        let blank = Entry {
            log_id: LogId::new(openraft::CommittedLeaderId::new(1, 0), 1),
            payload: EntryPayload::Blank,
        };
        let binary = write_entry(1, 2, &[0, 159, 146, 150, 255, b'\n']);
        let mut out = Vec::new();
        encode(&blank, &mut out).unwrap();
        encode(&binary, &mut out).unwrap();
        assert_eq!(
            out.iter().filter(|&&b| b == b'\n').count(),
            2,
            "one line per entry"
        );
        let mut lines = out.split_inclusive(|&b| b == b'\n');
        assert_eq!(decode(lines.next().unwrap()).unwrap(), blank);
        assert_eq!(decode(lines.next().unwrap()).unwrap(), binary);
    }

    #[test]
    fn damage_is_detected() {
        let mut out = Vec::new();
        encode(&write_entry(1, 5, b"hello"), &mut out).unwrap();
        assert_eq!(
            decode(&out[..out.len() - 1]).unwrap_err(),
            DecodeError::Unterminated
        );
        let mut flipped = out.clone();
        flipped[40] ^= 1;
        assert!(matches!(
            decode(&flipped).unwrap_err(),
            DecodeError::Checksum { .. }
        ));
        assert_eq!(decode_header(&out).unwrap(), Header { index: 5, term: 1 });
    }

    /// Golden file: every line of `testdata/log_codec.in` (one of each command, text and
    /// binary content, escapes, and damaged lines) decoded, shown as the entry openraft gets,
    /// and encoded back. `UPDATE_GOLDENFILES=1 cargo test` rewrites `log_codec.out`.
    #[test]
    fn golden_lines_decode_and_encode_back() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/raft/testdata");
        let input = std::fs::read(format!("{dir}/log_codec.in")).unwrap();
        let mut out = String::new();
        for (n, line) in input.split_inclusive(|&b| b == b'\n').enumerate() {
            let _ = write!(out, "line {}: ", n + 1);
            match decode(line) {
                Ok(entry) => {
                    let mut again = Vec::new();
                    encode(&entry, &mut again).unwrap();
                    let same = if again == line { "identical" } else { "DIFFERS" };
                    let _ = writeln!(
                        out,
                        "{}\n  encoded back: {same}",
                        serde_json::to_string(&entry).unwrap()
                    );
                }
                Err(e) => {
                    let _ = writeln!(out, "error: {e}");
                }
            }
        }
        let golden = format!("{dir}/log_codec.out");
        if std::env::var_os("UPDATE_GOLDENFILES").is_some() {
            std::fs::write(&golden, &out).unwrap();
        }
        let expected = std::fs::read_to_string(&golden).unwrap_or_default();
        assert!(
            out == expected,
            "log codec output changed (UPDATE_GOLDENFILES=1 to accept):\n{out}"
        );
    }
}
