//! [`FileRendezvous`]: how NCCL's ranks exchange rank 0's unique id through the run directory.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{io, Error, Result};

/// Hands a few bytes from rank 0 to the other ranks through a file on a file system they all
/// see (the run directory): how NCCL's ranks learn rank 0's unique id without a network
/// service of our own. The file is named after the job, so a file left by an earlier job is
/// never read as this one's.
#[derive(Debug, Clone)]
pub struct FileRendezvous {
    path: PathBuf,
    timeout: Duration,
}

impl FileRendezvous {
    /// The meeting file for `job` in `dir`; [`FileRendezvous::wait`] gives up after `timeout`.
    pub fn new(dir: &Path, job: &str, timeout: Duration) -> Self {
        // Launchers' ids may hold `@`, `/` or `;`: keep the name one plain path component.
        let name: String = job
            .chars()
            .map(|c| match c {
                'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_' => c,
                _ => '_',
            })
            .collect();
        Self {
            path: dir.join(format!(".rendezvous-{name}")),
            timeout,
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Rank 0: writes `bytes` (to a temporary name, then renamed, so a reader never sees part
    /// of it), creating the directory if needed.
    pub fn publish(&self, bytes: &[u8]) -> Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &self.path).map_err(io(&self.path))
    }

    /// The other ranks: the `len` bytes rank 0 published, polling until they appear.
    pub fn wait(&self, len: usize) -> Result<Vec<u8>> {
        let start = Instant::now();
        loop {
            match std::fs::read(&self.path) {
                Ok(bytes) if bytes.len() == len => return Ok(bytes),
                Ok(bytes) => {
                    return Err(Error::Launch {
                        msg: format!(
                            "{} holds {} bytes, expected {len}",
                            self.path.display(),
                            bytes.len()
                        ),
                    })
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&self.path)(e)),
            }
            if start.elapsed() > self.timeout {
                return Err(Error::Launch {
                    msg: format!(
                        "rank 0 did not publish {} within {:?}: is the directory on a file \
                         system every rank sees, and did rank 0 start?",
                        self.path.display(),
                        self.timeout
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Rank 0, once every rank has joined: removes the file (a missing one is fine).
    pub fn remove(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
