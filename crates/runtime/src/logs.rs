//! Container logs: JSON lines on disk, rotated by size, read back with `--tail` and `-f`.
//!
//! The shim pumps the container's stdout and stderr pipes into [`LogWriter`]; each line becomes
//! one JSON object `{"t": unix-nanos, "s": "out"|"err", "l": "text\n"}` (like Docker's json-file
//! driver, the newline is kept so output without one is reproduced exactly; invalid UTF-8 is
//! replaced). When `container.log` reaches the size limit it becomes `container.log.1`, older
//! files shift up, and the oldest beyond the count is deleted. [`read_tail`] reads the files
//! oldest first; [`LogFollower`] tails the current file across rotations, and [`LogWatch`]
//! wakes a follower when the directory changes (inotify), so nobody polls the file.

use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The current log file's name.
pub const LOG_FILE: &str = "container.log";
/// A line longer than this is split (bounds memory per line).
const MAX_LINE: usize = 16 << 10;

/// Which stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    /// Standard output.
    Out,
    /// Standard error.
    Err,
}

/// One line of a container's output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// Unix time in nanoseconds.
    pub t: u64,
    /// Stream.
    pub s: Stream,
    /// The text, with its newline when it had one.
    pub l: String,
}

/// Appends lines to a container's log directory, rotating by size.
#[derive(Debug)]
pub struct LogWriter {
    dir: PathBuf,
    file: File,
    size: u64,
    max_bytes: u64,
    files: u32,
}

impl LogWriter {
    /// Opens (appending to) `dir/container.log`.
    pub fn open(dir: &Path, max_bytes: u64, files: u32) -> std::io::Result<LogWriter> {
        std::fs::create_dir_all(dir)?;
        let file = std::fs::OpenOptions::new().create(true).append(true).open(dir.join(LOG_FILE))?;
        let size = file.metadata()?.len();
        Ok(LogWriter { dir: dir.to_path_buf(), file, size, max_bytes: max_bytes.max(4096), files: files.max(1) })
    }

    /// Writes one line.
    pub fn write(&mut self, s: Stream, text: &[u8]) -> std::io::Result<()> {
        let line = LogLine { t: now_nanos(), s, l: String::from_utf8_lossy(text).into_owned() };
        let mut buf = serde_json::to_vec(&line).map_err(std::io::Error::other)?;
        buf.push(b'\n');
        if self.size > 0 && self.size + buf.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        self.file.write_all(&buf)?;
        self.size += buf.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let name = |i: u32| if i == 0 { self.dir.join(LOG_FILE) } else { self.dir.join(format!("{LOG_FILE}.{i}")) };
        let _ = std::fs::remove_file(name(self.files - 1));
        for i in (0..self.files - 1).rev() {
            let _ = std::fs::rename(name(i), name(i + 1));
        }
        self.file = std::fs::OpenOptions::new().create(true).append(true).open(name(0))?;
        self.size = 0;
        Ok(())
    }
}

/// Splits a stream into lines for a [`LogWriter`]: call [`LineSplitter::push`] with what was
/// read and [`LineSplitter::finish`] at end of stream.
#[derive(Debug, Default)]
pub struct LineSplitter {
    pending: Vec<u8>,
}

impl LineSplitter {
    /// Feeds bytes; returns the complete lines (each with its newline) and over-long chunks.
    pub fn push(&mut self, data: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for &b in data {
            self.pending.push(b);
            if b == b'\n' || self.pending.len() >= MAX_LINE {
                out.push(std::mem::take(&mut self.pending));
            }
        }
        out
    }

    /// What is left without a newline.
    pub fn finish(&mut self) -> Option<Vec<u8>> {
        (!self.pending.is_empty()).then(|| std::mem::take(&mut self.pending))
    }
}

/// Reads the log files of `dir`, oldest first; with `tail`, only the last `tail` lines.
pub fn read_tail(dir: &Path, tail: Option<usize>) -> std::io::Result<Vec<LogLine>> {
    let mut files: Vec<(u32, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name == LOG_FILE {
            files.push((0, dir.join(&name)));
        } else if let Some(n) = name.strip_prefix(&format!("{LOG_FILE}.")).and_then(|n| n.parse().ok()) {
            files.push((n, dir.join(&name)));
        }
    }
    files.sort_by_key(|f| std::cmp::Reverse(f.0));
    let mut lines = std::collections::VecDeque::new();
    for (_, path) in files {
        let Ok(f) = File::open(&path) else { continue };
        for line in BufReader::new(f).lines() {
            if let Ok(l) = serde_json::from_str::<LogLine>(&line?) {
                lines.push_back(l);
                if tail.is_some_and(|t| lines.len() > t) {
                    lines.pop_front();
                }
            }
        }
    }
    Ok(lines.into())
}

/// Follows `dir/container.log` from its current end (or from a given offset), across rotations.
#[derive(Debug)]
pub struct LogFollower {
    path: PathBuf,
    file: Option<File>,
    ino: u64,
    partial: Vec<u8>,
}

impl LogFollower {
    /// Starts following at the current end of the log.
    pub fn from_end(dir: &Path) -> LogFollower {
        let path = dir.join(LOG_FILE);
        let mut file = File::open(&path).ok();
        let ino = file.as_ref().and_then(|f| f.metadata().ok()).map_or(0, |m| m.ino());
        if let Some(f) = file.as_mut() {
            let _ = f.seek(SeekFrom::End(0));
        }
        LogFollower { path, file, ino, partial: Vec::new() }
    }

    /// Starts following at the beginning of the current log file.
    pub fn from_start(dir: &Path) -> LogFollower {
        let path = dir.join(LOG_FILE);
        let file = File::open(&path).ok();
        let ino = file.as_ref().and_then(|f| f.metadata().ok()).map_or(0, |m| m.ino());
        LogFollower { path, file, ino, partial: Vec::new() }
    }

    /// Lines written since the last call.
    pub fn poll(&mut self) -> Vec<LogLine> {
        let mut out = Vec::new();
        self.drain(&mut out);
        // Rotated (or created)? Finish the old file, then switch to the new one from its start.
        let now_ino = std::fs::metadata(&self.path).map(|m| m.ino()).unwrap_or(0);
        if now_ino != 0 && now_ino != self.ino {
            self.drain(&mut out);
            self.file = File::open(&self.path).ok();
            self.ino = now_ino;
            self.partial.clear();
            self.drain(&mut out);
        }
        out
    }

    fn drain(&mut self, out: &mut Vec<LogLine>) {
        let Some(f) = self.file.as_mut() else { return };
        let mut buf = Vec::new();
        if f.read_to_end(&mut buf).is_err() {
            return;
        }
        self.partial.extend_from_slice(&buf);
        while let Some(pos) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=pos).collect();
            if let Ok(l) = serde_json::from_slice::<LogLine>(&line) {
                out.push(l);
            }
        }
    }
}

/// Wakes when a container's log directory changes: a line was written, a file was rotated.
pub struct LogWatch {
    events: Option<inotify::EventStream<Vec<u8>>>,
}

impl std::fmt::Debug for LogWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogWatch").field("inotify", &self.events.is_some()).finish()
    }
}

/// How often a follower looks when inotify is unavailable (the per-user instance limit hit).
const FALLBACK_POLL: std::time::Duration = std::time::Duration::from_millis(50);

impl LogWatch {
    /// Watches `dir`. Without inotify (its per-user limit reached) it wakes every 50 ms instead.
    pub fn new(dir: &Path) -> LogWatch {
        let events = (|| {
            let ino = inotify::Inotify::init()?;
            let mask = inotify::WatchMask::MODIFY | inotify::WatchMask::CREATE | inotify::WatchMask::MOVED_TO;
            ino.watches().add(dir, mask)?;
            ino.into_event_stream(vec![0u8; 4096])
        })();
        if let Err(e) = &events {
            tracing::debug!(err = %e, dir = %dir.display(), "no inotify for a log follower; polling instead");
        }
        LogWatch { events: events.ok() }
    }

    /// Resolves when the directory may have changed.
    pub async fn changed(&mut self) {
        use futures::StreamExt;
        match self.events.as_mut() {
            Some(ev) => {
                if ev.next().await.is_none() {
                    self.events = None;
                }
            }
            None => tokio::time::sleep(FALLBACK_POLL).await,
        }
    }
}

fn now_nanos() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

impl From<LogLine> for shoal_types::LogEntry {
    fn from(l: LogLine) -> Self {
        shoal_types::LogEntry {
            stream: match l.s {
                Stream::Out => "stdout",
                Stream::Err => "stderr",
            }
            .to_string(),
            text: l.l,
            time_unix_nanos: l.t,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_and_reads_back_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut w = LogWriter::open(dir.path(), 4096, 3).expect("open");
        for i in 0..300 {
            w.write(if i % 2 == 0 { Stream::Out } else { Stream::Err }, format!("line {i}\n").as_bytes())
                .expect("write");
        }
        let files = std::fs::read_dir(dir.path()).expect("read_dir").count();
        assert_eq!(files, 3, "current + 2 rotated");
        let all = read_tail(dir.path(), None).expect("read");
        assert!(all.len() < 300, "oldest rotated away");
        assert_eq!(all.last().map(|l| l.l.as_str()), Some("line 299\n"));
        let nums: Vec<u32> = all.iter().map(|l| l.l.trim().trim_start_matches("line ").parse().expect("num")).collect();
        assert!(nums.windows(2).all(|w| w[1] == w[0] + 1), "in order, no gaps");
        let tail = read_tail(dir.path(), Some(5)).expect("tail");
        assert_eq!(tail.len(), 5);
        assert_eq!(tail[0].l, "line 295\n");
        assert_eq!(tail[0].s, Stream::Err);
    }

    #[test]
    fn follower_crosses_rotation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut w = LogWriter::open(dir.path(), 4096, 2).expect("open");
        w.write(Stream::Out, b"before\n").expect("write");
        let mut f = LogFollower::from_end(dir.path());
        let mut seen = Vec::new();
        for i in 0..200 {
            w.write(Stream::Out, format!("{i}\n").as_bytes()).expect("write");
            if i % 7 == 0 {
                seen.extend(f.poll());
            }
        }
        seen.extend(f.poll());
        let nums: Vec<u32> = seen.iter().map(|l| l.l.trim().parse().expect("num")).collect();
        assert_eq!(nums, (0..200).collect::<Vec<_>>());
    }

    #[test]
    fn splitter_keeps_newlines_and_bounds_lines() {
        let mut s = LineSplitter::default();
        let mut lines = s.push(b"a\nb");
        lines.extend(s.push(b"c\n"));
        assert_eq!(lines, vec![b"a\n".to_vec(), b"bc\n".to_vec()]);
        let long = vec![b'x'; MAX_LINE + 10];
        assert_eq!(s.push(&long).len(), 1);
        assert_eq!(s.finish().map(|l| l.len()), Some(10));
        assert_eq!(s.finish(), None);
    }
}
