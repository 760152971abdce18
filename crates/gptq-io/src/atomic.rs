//! Atomic outputs: every file or folder `gptq` writes is first written under a
//! temporary name beside its destination, fsynced, and renamed into place only
//! when complete (then the parent folder is fsynced, so the rename itself is
//! durable), so an interrupted or failed run never leaves a partial output.
//!
//! Temporary paths in use are registered; [`abandon_all`] (called by the CLI
//! on Ctrl-C) removes them and blocks any later rename into place, so a
//! signal never leaves a half-written output or a stray temporary behind.

use crate::{Error, Result};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

/// Temporary paths currently being written (files and folders).
static LIVE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn live() -> MutexGuard<'static, Vec<PathBuf>> {
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

fn register(p: &Path) {
    live().push(p.to_path_buf());
}

fn unregister(list: &mut Vec<PathBuf>, p: &Path) {
    if let Some(i) = list.iter().position(|x| x == p) {
        list.swap_remove(i);
    }
}

/// Removes every registered temporary file and folder and keeps the registry
/// locked for the rest of the process, so no output can be renamed into place
/// afterwards. For a process about to exit (interrupt handling); returns the
/// number of paths removed.
pub fn abandon_all() -> usize {
    let guard = live();
    let mut n = 0;
    for p in guard.iter() {
        // A folder may still be filled by another thread: retry a few times.
        for _ in 0..5 {
            let r = if p.is_dir() {
                fs::remove_dir_all(p)
            } else {
                fs::remove_file(p)
            };
            if r.is_ok() || !p.exists() {
                n += 1;
                break;
            }
        }
    }
    // Held until exit: commits block instead of publishing an output.
    std::mem::forget(guard);
    n
}

/// Fsyncs a folder so that renames and new entries in it are durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    match fs::File::open(dir).and_then(|d| d.sync_all()) {
        // Some filesystems refuse fsync on folders; the data is synced anyway.
        Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => Ok(()),
        r => r,
    }
}

fn parent_of(p: &Path) -> &Path {
    p.parent().unwrap_or(Path::new("."))
}

/// A temporary sibling path of `dest`: `.NAME.tmp-PID`.
pub fn temp_sibling(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = format!(".{name}.tmp-{}", std::process::id());
    match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.join(tmp),
        _ => PathBuf::from(tmp),
    }
}

/// Writes `bytes` to `dest` atomically (temp file, fsync, rename, fsync of
/// the folder).
pub fn write_file(dest: &Path, bytes: &[u8]) -> Result<()> {
    write_file_with(dest, |f| f.write_all(bytes))
}

/// Copies the file `src` to `dest` atomically.
pub fn copy_file(src: &Path, dest: &Path) -> Result<()> {
    let mut from = fs::File::open(src).map_err(|e| Error::io(src, e))?;
    write_file_with(dest, |w| std::io::copy(&mut from, w).map(|_| ()))
}

/// Writes `dest` atomically, filling it through `fill`.
pub fn write_file_with(
    dest: &Path,
    fill: impl FnOnce(&mut std::io::BufWriter<fs::File>) -> std::io::Result<()>,
) -> Result<()> {
    let tmp = temp_sibling(dest);
    register(&tmp);
    let run = || -> std::io::Result<()> {
        let f = fs::File::create(&tmp)?;
        let mut w = std::io::BufWriter::new(f);
        fill(&mut w)?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        drop(f);
        let mut list = live();
        fs::rename(&tmp, dest)?;
        unregister(&mut list, &tmp);
        drop(list);
        sync_dir(parent_of(dest))
    };
    run().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        unregister(&mut live(), &tmp);
        Error::io(dest, e)
    })
}

/// A folder being written: files go into a temporary sibling folder, which
/// [`AtomicDir::commit`] renames to the destination. Dropped uncommitted, the
/// temporary folder is removed.
pub struct AtomicDir {
    tmp: PathBuf,
    dest: PathBuf,
    overwrite: bool,
    done: bool,
}

impl AtomicDir {
    /// Starts writing `dest`. Fails if `dest` exists and `overwrite` is false.
    pub fn create(dest: &Path, overwrite: bool) -> Result<Self> {
        if dest.exists() && !overwrite {
            return Err(Error::io(
                dest,
                std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "output folder exists (pass --overwrite to replace it)",
                ),
            ));
        }
        if let Some(parent) = dest.parent() {
            if !parent.as_os_str().is_empty() && !parent.exists() {
                fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
            }
        }
        let tmp = temp_sibling(dest);
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        }
        fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
        register(&tmp);
        Ok(Self {
            tmp,
            dest: dest.to_path_buf(),
            overwrite,
            done: false,
        })
    }

    /// The path of `name` inside the temporary folder.
    pub fn path(&self, name: &str) -> PathBuf {
        self.tmp.join(name)
    }

    /// Moves the finished folder into place: fsyncs the folder (its files
    /// were synced as they were written), renames it, fsyncs the parent.
    pub fn commit(mut self) -> Result<()> {
        sync_dir(&self.tmp).map_err(|e| Error::io(&self.tmp, e))?;
        let mut list = live();
        if self.dest.exists() {
            if !self.overwrite {
                return Err(Error::io(
                    &self.dest,
                    std::io::Error::new(
                        std::io::ErrorKind::AlreadyExists,
                        "output folder appeared while writing",
                    ),
                ));
            }
            let old = temp_sibling(&self.dest.with_extension("old"));
            fs::rename(&self.dest, &old).map_err(|e| Error::io(&self.dest, e))?;
            if let Err(e) = fs::rename(&self.tmp, &self.dest) {
                // Put the previous output back rather than lose it.
                let _ = fs::rename(&old, &self.dest);
                return Err(Error::io(&self.dest, e));
            }
            let _ = fs::remove_dir_all(&old);
        } else {
            fs::rename(&self.tmp, &self.dest).map_err(|e| Error::io(&self.dest, e))?;
        }
        unregister(&mut list, &self.tmp);
        drop(list);
        self.done = true;
        sync_dir(parent_of(&self.dest)).map_err(|e| Error::io(&self.dest, e))
    }
}

impl Drop for AtomicDir {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_dir_all(&self.tmp);
            unregister(&mut live(), &self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_is_invisible_until_commit_and_removed_on_drop() {
        let root = tempfile::tempdir().unwrap();
        let dest = root.path().join("out");
        {
            let d = AtomicDir::create(&dest, false).unwrap();
            write_file(&d.path("a.txt"), b"x").unwrap();
            assert!(!dest.exists());
        }
        assert!(!dest.exists());
        assert_eq!(
            fs::read_dir(root.path()).unwrap().count(),
            0,
            "temp folder left behind"
        );
        let d = AtomicDir::create(&dest, false).unwrap();
        write_file(&d.path("a.txt"), b"x").unwrap();
        d.commit().unwrap();
        assert_eq!(fs::read(dest.join("a.txt")).unwrap(), b"x");
        assert!(AtomicDir::create(&dest, false).is_err());
    }
}
