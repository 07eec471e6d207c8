//! Safe unpacking of a function bundle (a gzip-compressed tar of its folder).
//!
//! Names are not trusted as text: every write, link and folder is checked
//! against the tree as it really is on disk when that entry is unpacked.
//! Nothing is ever written through a link (an entry whose folder is a link
//! is refused, files are created with `O_NOFOLLOW` and never over a link),
//! every symlink must resolve inside the folder (checked when it is made and
//! again once the whole archive is in, since a later entry can change what an
//! earlier link resolves through), hard links may only name regular files
//! this archive already unpacked, and devices, fifos and sparse files are
//! refused. [`UnpackLimits`] bound the bytes really written (a gzip bomb
//! whose headers lie still stops at the cap), the entry count, path depth and
//! length and the manifest's size. On any error the folder is removed.

use std::collections::{HashSet, VecDeque};
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use flate2::read::GzDecoder;
use tar::{Archive, EntryType};

/// How much one bundle may unpack to. The defaults suit a board with 1 GiB
/// of memory and a few GiB of storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnpackLimits {
    /// Bytes written to disk, all files together.
    pub max_unpacked: u64,
    /// Entries in the archive (files, folders, links, extension headers).
    pub max_entries: usize,
    /// Folders an entry's path may be nested in.
    pub max_depth: usize,
    /// Bytes in an entry's path or a link's target.
    pub max_path_len: usize,
    /// Bytes in the top-level `sedge.toml`.
    pub max_manifest: u64,
}

impl UnpackLimits {
    /// Each bound the larger of `self`'s and `other`'s.
    pub fn at_least(&self, other: &Self) -> Self {
        Self {
            max_unpacked: self.max_unpacked.max(other.max_unpacked),
            max_entries: self.max_entries.max(other.max_entries),
            max_depth: self.max_depth.max(other.max_depth),
            max_path_len: self.max_path_len.max(other.max_path_len),
            max_manifest: self.max_manifest.max(other.max_manifest),
        }
    }
}

impl Default for UnpackLimits {
    fn default() -> Self {
        Self {
            max_unpacked: 1024 * 1024 * 1024,
            max_entries: 10_000,
            max_depth: 32,
            max_path_len: 1024,
            max_manifest: 64 * 1024,
        }
    }
}

impl UnpackLimits {
    /// Bytes of tar headers, long names and pax records allowed before each
    /// entry. The tar reader holds long names and pax records in memory, so
    /// this bounds that memory as well as time spent skipping data.
    fn metadata_allowance(&self) -> u64 {
        64 * 1024 + 4 * self.max_path_len as u64
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("bundle is not a readable tar.gz archive: {0}")]
    NotAnArchive(String),
    #[error("bundle entry {path:?} is refused: {reason}")]
    UnsafeEntry { path: String, reason: String },
    #[error("bundle is too large: {0}")]
    TooLarge(String),
    #[error("bundle has no sedge.toml at its top level")]
    NoManifest,
    #[error("could not write the unpacked bundle: {0}")]
    Io(#[from] io::Error),
}

/// Symlinks followed while resolving one link, as Linux allows.
const MAX_HOPS: u32 = 40;

/// Unpacks the tar.gz read from `archive` into `dest`, which must not exist
/// yet (its parent must). On error nothing of `dest` is left.
pub fn unpack(archive: impl Read, dest: &Path, limits: &UnpackLimits) -> Result<(), BundleError> {
    fs::create_dir(dest)?;
    let result = Unpacker::new(dest, limits).run(archive);
    if result.is_err() {
        // Removal never follows links, so a hostile tree cannot redirect it.
        let _ = fs::remove_dir_all(dest);
    }
    result
}

/// Counts what the tar reader consumes and refuses past a moving limit, so
/// headers, long names and skipped data cannot grow without bound.
struct Metered<R> {
    inner: R,
    meter: Rc<Meter>,
}

#[derive(Default)]
struct Meter {
    read: std::cell::Cell<u64>,
    limit: std::cell::Cell<u64>,
    tripped: std::cell::Cell<bool>,
}

impl Meter {
    fn allow(&self, more: u64) {
        self.limit.set(self.read.get().saturating_add(more));
    }
}

impl<R: Read> Read for Metered<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let room = self.meter.limit.get().saturating_sub(self.meter.read.get());
        if room == 0 && !buf.is_empty() {
            self.meter.tripped.set(true);
            return Err(io::Error::other("bundle metadata over its limit"));
        }
        let want = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.meter.read.set(self.meter.read.get() + n as u64);
        Ok(n)
    }
}

/// A file being unpacked: counts the bytes really written against the cap
/// and remembers whether a failure was the disk's or the archive's.
struct Capped<'a> {
    file: &'a mut File,
    written: u64,
    cap: u64,
    over: bool,
    failed: bool,
}

impl Write for Capped<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.written.saturating_add(buf.len() as u64) > self.cap {
            self.over = true;
            return Err(io::Error::other("over the unpacked-size cap"));
        }
        let n = self.file.write(buf).inspect_err(|_| self.failed = true)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush().inspect_err(|_| self.failed = true)
    }
}

struct Unpacker<'a> {
    dest: &'a Path,
    limits: &'a UnpackLimits,
    written: u64,
    /// Regular files this archive put in place: the only hard-link targets.
    files: HashSet<PathBuf>,
    /// Symlinks made, with the entry name that made them, for the last check.
    links: Vec<(PathBuf, String)>,
}

fn refuse(path: &str, reason: impl Into<String>) -> BundleError {
    BundleError::UnsafeEntry { path: path.to_owned(), reason: reason.into() }
}

impl<'a> Unpacker<'a> {
    fn new(dest: &'a Path, limits: &'a UnpackLimits) -> Self {
        Self { dest, limits, written: 0, files: HashSet::new(), links: Vec::new() }
    }

    fn run(mut self, archive: impl Read) -> Result<(), BundleError> {
        let meter = Rc::new(Meter::default());
        let reader = Metered { inner: GzDecoder::new(io::BufReader::new(archive)), meter: meter.clone() };
        let mut tar = Archive::new(reader);
        let limits = self.limits;
        let bad = |meter: &Meter, e: io::Error| {
            if meter.tripped.get() {
                BundleError::TooLarge(format!(
                    "an entry's headers, long names or skipped data take more than {} bytes",
                    limits.metadata_allowance()
                ))
            } else {
                BundleError::NotAnArchive(e.to_string())
            }
        };
        meter.allow(self.limits.metadata_allowance());
        let mut entries = tar.entries().map_err(|e| bad(&meter, e))?;
        let mut count = 0usize;
        loop {
            meter.allow(self.limits.metadata_allowance());
            let Some(entry) = entries.next() else { break };
            let mut entry = entry.map_err(|e| bad(&meter, e))?;
            count += 1;
            if count > self.limits.max_entries {
                return Err(BundleError::TooLarge(format!("more than {} entries", self.limits.max_entries)));
            }
            // File data is bounded by the unpacked-size cap as it is written.
            meter.allow(u64::MAX);
            self.entry(&mut entry).map_err(|e| match e {
                BundleError::NotAnArchive(msg) if meter.tripped.get() => bad(&meter, io::Error::other(msg)),
                other => other,
            })?;
        }
        self.recheck_links()?;
        let manifest = fs::metadata(self.dest.join(sedge_core::manifest::MANIFEST_FILE));
        match manifest {
            Ok(m) if m.is_file() && m.len() > self.limits.max_manifest => Err(self.manifest_too_large()),
            Ok(m) if m.is_file() => Ok(()),
            _ => Err(BundleError::NoManifest),
        }
    }

    fn manifest_too_large(&self) -> BundleError {
        BundleError::TooLarge(format!(
            "{} is over {} bytes",
            sedge_core::manifest::MANIFEST_FILE,
            self.limits.max_manifest
        ))
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), BundleError> {
        let bad = |e: io::Error| BundleError::NotAnArchive(e.to_string());
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        if raw.len() > self.limits.max_path_len {
            return Err(refuse(&shown, format!("its path is longer than {} bytes", self.limits.max_path_len)));
        }
        let kind = entry.header().entry_type();
        if matches!(kind, EntryType::XGlobalHeader) {
            return Ok(());
        }
        let raw_path = entry.path().map_err(bad)?.into_owned();
        let rel = safe_relative(&raw_path).map_err(|r| refuse(&shown, r))?;
        if rel.components().count() > self.limits.max_depth {
            return Err(refuse(&shown, format!("it is nested deeper than {} folders", self.limits.max_depth)));
        }
        if rel.as_os_str().is_empty() {
            return if kind.is_dir() { Ok(()) } else { Err(refuse(&shown, "it has no name")) };
        }
        self.make_parents(&rel, &shown)?;
        let target = self.dest.join(&rel);
        match kind {
            EntryType::Directory => self.make_dir(&target, &shown),
            EntryType::Regular | EntryType::Continuous => self.write_file(entry, &rel, &shown),
            EntryType::Symlink | EntryType::Link => {
                let link = entry
                    .link_name()
                    .map_err(bad)?
                    .ok_or_else(|| refuse(&shown, "it is a link without a target"))?
                    .into_owned();
                if link.as_os_str().is_empty() {
                    return Err(refuse(&shown, "it is a link without a target"));
                }
                if link.as_os_str().len() > self.limits.max_path_len {
                    return Err(refuse(
                        &shown,
                        format!("its link target is longer than {} bytes", self.limits.max_path_len),
                    ));
                }
                self.clear_for_file(&target, &shown)?;
                if kind == EntryType::Symlink {
                    self.make_symlink(&rel, &link, &shown)
                } else {
                    self.make_hard_link(&rel, &link, &shown)
                }
            }
            _ => Err(refuse(&shown, "only files, folders and links are allowed (no devices, fifos or sparse files)")),
        }
    }

    /// Creates the folders above `rel` one by one, refusing any that already
    /// exists as a link or a file: nothing is ever written through a link.
    fn make_parents(&self, rel: &Path, shown: &str) -> Result<(), BundleError> {
        let Some(parent) = rel.parent() else { return Ok(()) };
        let mut at = self.dest.to_path_buf();
        let mut so_far = PathBuf::new();
        for part in parent.components() {
            at.push(part);
            so_far.push(part);
            match fs::symlink_metadata(&at) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(refuse(shown, format!("its folder {} is a link", so_far.display())));
                }
                Ok(m) if m.is_dir() => {}
                Ok(_) => return Err(refuse(shown, format!("its folder {} is a file", so_far.display()))),
                Err(e) if e.kind() == io::ErrorKind::NotFound => fs::create_dir(&at)?,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    fn make_dir(&self, target: &Path, shown: &str) -> Result<(), BundleError> {
        match fs::symlink_metadata(target) {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(m) if m.file_type().is_symlink() => Err(refuse(shown, "it would replace a link with a folder")),
            Ok(_) => Err(refuse(shown, "it would replace a file with a folder")),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(fs::create_dir(target)?),
            Err(e) => Err(e.into()),
        }
    }

    /// Makes room for a file or link at `target`: an earlier regular file of
    /// the same name is replaced (as tar does), a folder or a link never is.
    fn clear_for_file(&self, target: &Path, shown: &str) -> Result<(), BundleError> {
        match fs::symlink_metadata(target) {
            Ok(m) if m.file_type().is_symlink() => Err(refuse(shown, "it would overwrite a link")),
            Ok(m) if m.is_dir() => Err(refuse(shown, "it would replace a folder")),
            // Removing rather than truncating keeps a hard-linked twin intact.
            Ok(_) => Ok(fs::remove_file(target)?),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn write_file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        rel: &Path,
        shown: &str,
    ) -> Result<(), BundleError> {
        let target = self.dest.join(rel);
        self.clear_for_file(&target, shown)?;
        let mut file = create_new_nofollow(&target)?;
        let is_manifest = rel == Path::new(sedge_core::manifest::MANIFEST_FILE);
        let budget = self.limits.max_unpacked.saturating_sub(self.written);
        let cap = if is_manifest { budget.min(self.limits.max_manifest) } else { budget };
        let mut out = Capped { file: &mut file, written: 0, cap, over: false, failed: false };
        let copied = io::copy(entry, &mut out);
        let (written, over, failed) = (out.written, out.over, out.failed);
        self.written += written;
        match copied {
            Ok(_) => {}
            Err(_) if over && is_manifest && written < budget => return Err(self.manifest_too_large()),
            Err(_) if over => {
                return Err(BundleError::TooLarge(format!(
                    "it unpacks to more than {} bytes",
                    self.limits.max_unpacked
                )))
            }
            Err(e) if failed => return Err(BundleError::Io(e)),
            Err(e) => return Err(BundleError::NotAnArchive(e.to_string())),
        }
        let executable = entry.header().mode().is_ok_and(|m| m & 0o111 != 0);
        set_mode(&file, if executable { 0o755 } else { 0o644 })?;
        self.files.insert(rel.to_path_buf());
        Ok(())
    }

    fn make_symlink(&mut self, rel: &Path, link: &Path, shown: &str) -> Result<(), BundleError> {
        let from = rel.parent().unwrap_or(Path::new(""));
        resolve_inside(self.dest, from, link).map_err(|r| refuse(shown, r))?;
        make_symlink(link, &self.dest.join(rel))?;
        self.links.push((rel.to_path_buf(), shown.to_owned()));
        Ok(())
    }

    fn make_hard_link(&mut self, rel: &Path, link: &Path, shown: &str) -> Result<(), BundleError> {
        let source = safe_relative(link)
            .map_err(|r| refuse(shown, format!("it is a hard link to a path outside the folder ({r})")))?;
        let not_ours = || {
            refuse(
                shown,
                format!("it is a hard link to {}, which is not a file unpacked from this bundle", link.display()),
            )
        };
        if !self.files.contains(&source) || no_links_above(self.dest, &source).is_err() {
            return Err(not_ours());
        }
        let at = self.dest.join(&source);
        match fs::symlink_metadata(&at) {
            Ok(m) if m.is_file() => {}
            _ => return Err(not_ours()),
        }
        fs::hard_link(&at, self.dest.join(rel))?;
        self.files.insert(rel.to_path_buf());
        Ok(())
    }

    /// A later entry can change what an earlier link resolves through (a
    /// missing folder becomes a link), so every link is checked once more
    /// against the finished tree.
    fn recheck_links(&self) -> Result<(), BundleError> {
        for (rel, shown) in &self.links {
            let at = self.dest.join(rel);
            let Ok(target) = fs::read_link(&at) else { continue };
            let from = rel.parent().unwrap_or(Path::new(""));
            resolve_inside(self.dest, from, &target).map_err(|r| refuse(shown, r))?;
        }
        Ok(())
    }
}

/// Turns an entry path into a relative path inside the folder, or says why not.
fn safe_relative(path: &Path) -> Result<PathBuf, &'static str> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err("it contains '..'"),
            Component::RootDir | Component::Prefix(_) => return Err("it is an absolute path"),
        }
    }
    Ok(out)
}

/// Fails if any folder on the way to `rel` inside `root` is a link.
fn no_links_above(root: &Path, rel: &Path) -> Result<(), ()> {
    let mut at = root.to_path_buf();
    if let Some(parent) = rel.parent() {
        for part in parent.components() {
            at.push(part);
            match fs::symlink_metadata(&at) {
                Ok(m) if m.is_dir() => {}
                _ => return Err(()),
            }
        }
    }
    Ok(())
}

enum Step {
    Up,
    Name(OsString),
}

/// Resolves `target`, as a symlink in folder `from` (relative to `root`)
/// would, against the tree as it is now: links met on the way are followed
/// like the kernel does, and what does not exist yet is taken literally.
/// Fails if the path ever climbs above `root` or names an absolute path.
fn resolve_inside(root: &Path, from: &Path, target: &Path) -> Result<(), String> {
    let outside = || "it is a link that points outside the folder".to_owned();
    let mut stack: Vec<OsString> = from.components().map(|c| c.as_os_str().to_owned()).collect();
    let mut pending: VecDeque<Step> = VecDeque::new();
    push_front(&mut pending, target).map_err(|()| "it is a link to an absolute path, outside the folder".to_owned())?;
    let mut hops = 0;
    while let Some(step) = pending.pop_front() {
        match step {
            Step::Up => {
                stack.pop().ok_or_else(outside)?;
            }
            Step::Name(name) => {
                stack.push(name);
                let at: PathBuf = std::iter::once(root.as_os_str().to_owned()).chain(stack.iter().cloned()).collect();
                let Ok(meta) = fs::symlink_metadata(&at) else { continue };
                if !meta.file_type().is_symlink() {
                    continue;
                }
                hops += 1;
                if hops > MAX_HOPS {
                    return Err("it is part of a loop of links".to_owned());
                }
                let next = fs::read_link(&at).map_err(|e| format!("its link could not be read: {e}"))?;
                stack.pop();
                push_front(&mut pending, &next)
                    .map_err(|()| format!("it resolves through {}, a link to an absolute path", at.display()))?;
            }
        }
    }
    Ok(())
}

fn push_front(pending: &mut VecDeque<Step>, path: &Path) -> Result<(), ()> {
    let mut steps = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => steps.push(Step::Name(n.to_owned())),
            Component::ParentDir => steps.push(Step::Up),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return Err(()),
        }
    }
    for s in steps.into_iter().rev() {
        pending.push_front(s);
    }
    Ok(())
}

/// `O_EXCL` already refuses an existing link; `O_NOFOLLOW` is a second guard.
#[cfg(unix)]
fn create_new_nofollow(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new().write(true).create_new(true).custom_flags(libc::O_NOFOLLOW).open(path)
}

#[cfg(unix)]
fn set_mode(file: &File, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(fs::Permissions::from_mode(mode))
}

#[cfg(unix)]
fn make_symlink(link: &Path, at: &Path) -> io::Result<()> {
    std::os::unix::fs::symlink(link, at)
}

#[cfg(test)]
mod tests;
