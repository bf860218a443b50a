//! Checks on what peers send that openraft does not make: a forwarded proposal must follow
//! the public API's rules, and a snapshot must be a valid archive before openraft stores it.

use openraft::raft::InstallSnapshotRequest;

use super::Node;
use crate::error::{Error, Result};
use crate::names;
use crate::raft::command::Command;
use crate::raft::TypeConfig;
use crate::store::snapshot::Validator;

impl Node {
    /// Checks a command that arrived from a peer with the rules the public API applies to a
    /// client's request: clean names, content within one entry's size.
    pub(crate) fn check_forwarded(&self, cmd: &Command) -> Result<()> {
        for name in cmd.names() {
            names::validate(name)?;
        }
        let limit = (self.config.chunk_size as u64).min(self.config.max_body);
        if cmd.data_len() as u64 > limit {
            return Err(Error::TooLarge { limit });
        }
        Ok(())
    }

    /// Checks the next piece of a snapshot from the leader before openraft stores it: pieces
    /// must arrive in order and form a valid archive, or the piece is refused and the node
    /// keeps its state (openraft would treat a failed install as fatal).
    pub(crate) fn check_snapshot_chunk(
        &self,
        req: &InstallSnapshotRequest<TypeConfig>,
    ) -> std::result::Result<(), String> {
        let mut incoming = self
            .incoming_snapshot
            .lock()
            .expect("snapshot check lock poisoned");
        if req.offset == 0 {
            *incoming = Some((req.meta.snapshot_id.clone(), Validator::default()));
        }
        let Some((id, validator)) = incoming.as_mut() else {
            return Err(format!(
                "snapshot piece at offset {} without its beginning",
                req.offset
            ));
        };
        if *id != req.meta.snapshot_id || validator.position() != req.offset {
            let want = validator.position();
            *incoming = None;
            return Err(format!(
                "snapshot piece out of order (offset {}, expected {want})",
                req.offset
            ));
        }
        let checked = validator
            .feed(&req.data)
            .and_then(|()| if req.done { validator.finish() } else { Ok(()) });
        if checked.is_err() || req.done {
            *incoming = None;
        }
        checked.map_err(|e| format!("refusing snapshot {}: {e}", req.meta.snapshot_id))
    }
}
