//! Room left on the data directory's disk: a call is refused (507) rather
//! than accepted into a store that may not be able to write it.

use std::path::Path;

/// Bytes available to the node's user on the file system holding `dir`.
pub fn available(dir: &Path) -> std::io::Result<u64> {
    let st = nix::sys::statvfs::statvfs(dir).map_err(std::io::Error::from)?;
    Ok((st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64))
}

/// Whether `incoming` more bytes leave at least `reserve` free.
pub fn has_room(available: u64, incoming: u64, reserve: u64) -> bool {
    available >= incoming.saturating_mul(2).saturating_add(reserve)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_counts_the_call_twice_and_the_reserve() {
        // Twice: the WAL holds a copy until it is checkpointed into the database.
        assert!(has_room(1000, 100, 800));
        assert!(!has_room(1000, 101, 800));
        assert!(!has_room(0, 0, 1));
        assert!(available(Path::new("/")).is_ok());
    }
}
