//! The working directory: checking task file paths and writing the files before the commands run.

use std::io;
use std::path::{Component, Path, PathBuf};

use fabric_core::TaskFile;
use tokio::io::AsyncWriteExt;

use crate::RuntimeError;

/// Name of the per-job temporary directory inside the working directory (`TMPDIR`).
pub(crate) const TMP_DIR: &str = ".tmp";

const ESCAPES: &str = "paths must be relative and stay inside the working directory";

/// A task file path as a relative path of plain names, or why it is refused.
///
/// Checked before anything touches the disk, so a bad job changes nothing.
pub(crate) fn checked_file_path(path: &str) -> Result<PathBuf, RuntimeError> {
    let refuse = |reason: &str| RuntimeError::InvalidFilePath {
        path: path.to_string(),
        reason: reason.to_string(),
    };
    if path.contains('\0') {
        return Err(refuse("paths cannot contain NUL bytes"));
    }
    if path.ends_with('/') {
        return Err(refuse("paths must name a file, not a directory"));
    }
    let mut relative = PathBuf::new();
    for component in Path::new(path).components() {
        match component {
            Component::Normal(name) => relative.push(name),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(refuse(ESCAPES));
            }
        }
    }
    if relative.as_os_str().is_empty() {
        return Err(refuse(
            "paths must name a file inside the working directory",
        ));
    }
    Ok(relative)
}

/// Creates `workdir` (and its `.tmp`) and returns its absolute, canonical path.
pub(crate) async fn create(workdir: &Path) -> Result<PathBuf, RuntimeError> {
    let failed = |cause| RuntimeError::CreateWorkdir {
        path: workdir.to_path_buf(),
        cause,
    };
    tokio::fs::create_dir_all(workdir).await.map_err(failed)?;
    // Absolute, because it becomes HOME and a relative HOME means nothing to programs.
    let workdir = tokio::fs::canonicalize(workdir).await.map_err(failed)?;
    let tmp = workdir.join(TMP_DIR);
    tokio::fs::create_dir_all(&tmp)
        .await
        .map_err(|cause| RuntimeError::CreateWorkdir { path: tmp, cause })?;
    Ok(workdir)
}

/// Writes one task file (its path already checked) under `workdir`.
///
/// A working directory may be reused by an agent's earlier tasks, which could
/// have left a symbolic link where a file is to go. The fabric writes files
/// with its own rights, so following such a link could write anywhere; every
/// link on the way is refused instead. (A command running concurrently in the
/// same directory could still swap one in between check and use; the
/// `process` isolation level writes files from inside the sandbox.)
pub(crate) async fn write_file(
    workdir: &Path,
    relative: &Path,
    file: &TaskFile,
) -> Result<(), RuntimeError> {
    let failed = |cause| RuntimeError::WriteFile {
        path: file.path.clone(),
        workdir: workdir.to_path_buf(),
        cause,
    };
    let through_link = |link: &Path| RuntimeError::InvalidFilePath {
        path: file.path.clone(),
        reason: format!(
            "{} is a symbolic link and task files are never written through links; remove it or choose another path",
            link.strip_prefix(workdir).unwrap_or(link).display()
        ),
    };

    let mut target = workdir.to_path_buf();
    let mut names = relative.components().peekable();
    while let Some(name) = names.next() {
        target.push(name);
        if names.peek().is_none() {
            break; // `target` is the file itself
        }
        match tokio::fs::symlink_metadata(&target).await {
            Ok(meta) if meta.file_type().is_symlink() => return Err(through_link(&target)),
            Ok(_) => {} // a directory, or something that makes the open below fail clearly
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                match tokio::fs::create_dir(&target).await {
                    Ok(()) => {}
                    Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(err) => return Err(failed(err)),
                }
            }
            Err(err) => return Err(failed(err)),
        }
    }

    let mut out = tokio::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&target)
        .await
        .map_err(|err| {
            if err.raw_os_error() == Some(libc::ELOOP) {
                through_link(&target)
            } else {
                failed(err)
            }
        })?;
    out.write_all(file.content.as_bytes())
        .await
        .map_err(failed)?;
    // tokio writes in the background; flush so the bytes are in the file
    // before the commands start, not merely queued.
    out.flush().await.map_err(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(path: &str) -> String {
        match checked_file_path(path) {
            Err(RuntimeError::InvalidFilePath { reason, .. }) => reason,
            other => panic!("{path:?} should be refused, got {other:?}"),
        }
    }

    #[test]
    fn plain_relative_paths_are_accepted() {
        assert_eq!(checked_file_path("a.txt").unwrap(), PathBuf::from("a.txt"));
        assert_eq!(
            checked_file_path("./src//main.rs").unwrap(),
            PathBuf::from("src/main.rs")
        );
        assert_eq!(
            checked_file_path(".hidden/x..y").unwrap(),
            PathBuf::from(".hidden/x..y")
        );
    }

    #[test]
    fn paths_leaving_the_working_directory_are_refused() {
        for path in ["../x", "a/../../x", "a/..", "/etc/passwd", "//x"] {
            assert_eq!(reason(path), ESCAPES, "{path}");
        }
        assert_eq!(
            checked_file_path("../x").unwrap_err().to_string(),
            "invalid file path \"../x\": paths must be relative and stay inside the working directory"
        );
    }

    #[test]
    fn paths_that_name_no_file_are_refused() {
        assert!(reason("").contains("name a file"));
        assert!(reason(".").contains("name a file"));
        assert!(reason("dir/").contains("not a directory"));
        assert!(reason("a\0b").contains("NUL"));
    }
}
