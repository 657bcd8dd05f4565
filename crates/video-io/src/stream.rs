//! Reading a video forward, once, from a file of any length, standard input or a URL FFmpeg
//! opens (`udp://`, `rtsp://`, `http://`, ...): frames numbered in decoded presentation order,
//! timed by the stream's timestamps, converted to RGB only when the caller wants them.
//!
//! Nothing is indexed or kept: memory does not grow with the stream's length. Every read goes
//! through FFmpeg's interrupt callback, so a source that stops sending ends the stream after the
//! read timeout instead of hanging, and a stop flag (Ctrl-C) ends it at the next read. Standard
//! input is switched to non-blocking reads for this: FFmpeg's pipe protocol then polls, and
//! polling checks the callback, where a blocking `read` would wait forever.

use std::ffi::{CString, OsStr};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use image::RgbImage;
use video_rs::ffmpeg;

use crate::video::{init_ffmpeg, next_packet, open_decoder, packet_discarded, to_rgb, Scaler};
use crate::{DecodeOptions, Error, Result};

/// Where a stream comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamSource {
    /// A file.
    File(PathBuf),
    /// Standard input (`-` on a command line).
    Stdin,
    /// Anything with a `scheme://`, handed to FFmpeg as it is.
    Url(String),
}

impl StreamSource {
    /// `-` is standard input, `scheme://...` a URL, anything else a file.
    pub fn parse(arg: &OsStr) -> Self {
        match arg.to_str() {
            Some("-") => StreamSource::Stdin,
            Some(s) if is_url(s) => StreamSource::Url(s.to_string()),
            _ => StreamSource::File(PathBuf::from(arg)),
        }
    }

    /// What FFmpeg is asked to open.
    fn ffmpeg_name(&self) -> Result<CString> {
        use std::os::unix::ffi::OsStrExt;
        let bytes = match self {
            // The pipe protocol on file descriptor 0 (FFmpeg itself does not read `-`).
            StreamSource::Stdin => b"pipe:0".as_slice(),
            // `file:` so that a file name with a colon is not taken for a protocol.
            StreamSource::File(p) => {
                return CString::new([b"file:".as_slice(), p.as_os_str().as_bytes()].concat())
                    .map_err(|_| self.error("path contains a NUL byte"))
            }
            StreamSource::Url(u) => u.as_bytes(),
        };
        CString::new(bytes).map_err(|_| self.error("name contains a NUL byte"))
    }

    /// The name errors carry.
    fn label(&self) -> PathBuf {
        PathBuf::from(self.to_string())
    }

    fn error(&self, reason: impl fmt::Display) -> Error {
        Error::NotAVideo {
            path: self.label(),
            reason: reason.to_string(),
        }
    }
}

impl fmt::Display for StreamSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StreamSource::File(p) => write!(f, "{}", p.display()),
            StreamSource::Stdin => f.write_str("standard input"),
            StreamSource::Url(u) => f.write_str(u),
        }
    }
}

/// `scheme://` with a scheme of letters, digits, `+`, `-` or `.` (RFC 3986).
fn is_url(s: &str) -> bool {
    s.split_once("://").is_some_and(|(scheme, _)| {
        scheme.len() > 1
            && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    })
}

/// How a stream is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamOptions {
    /// A read that brings nothing for this long ends the stream (while opening too).
    pub read_timeout: Duration,
    /// Decoder settings.
    pub decode: DecodeOptions,
}

/// One decoded frame.
#[derive(Debug, Clone)]
pub struct StreamFrame {
    /// Position in decoded presentation order, from 0.
    pub index: usize,
    /// Seconds from the first frame, by the stream's timestamps.
    pub time: f64,
    /// The picture, when the caller asked for this frame.
    pub image: Option<RgbImage>,
}

/// Why a stream ended.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEnd {
    /// The end of the file or stream, with every frame the container declared.
    Finished,
    /// The stop flag was raised (Ctrl-C).
    Interrupted,
    /// No data arrived for the read timeout.
    Stalled(Duration),
    /// Reading failed (a dropped connection, an I/O error), with FFmpeg's message.
    Broken(String),
    /// The data ended mid-packet, or before the duration the container declared; says which.
    Truncated(String),
}

impl StreamEnd {
    /// Whether the stream ended as it should (everything it had was read).
    pub fn is_complete(&self) -> bool {
        matches!(self, StreamEnd::Finished)
    }
}

impl fmt::Display for StreamEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StreamEnd::Finished => f.write_str("end of stream"),
            StreamEnd::Interrupted => f.write_str("interrupted"),
            StreamEnd::Stalled(t) => write!(f, "stalled: no data for {:.1} s", t.as_secs_f64()),
            StreamEnd::Broken(reason) => write!(f, "broken: {reason}"),
            StreamEnd::Truncated(reason) => write!(f, "truncated: {reason}"),
        }
    }
}

/// What the interrupt callback decided.
const GO_ON: u8 = 0;
const TIMED_OUT: u8 = 1;
const STOPPED: u8 = 2;

/// Shared with FFmpeg's interrupt callback: when the current read began, and why it was cut.
#[derive(Debug)]
struct Watchdog {
    epoch: Instant,
    /// Milliseconds since `epoch` at the last sign of progress.
    last: AtomicU64,
    timeout: Duration,
    stop: Arc<AtomicBool>,
    verdict: AtomicU8,
}

impl Watchdog {
    fn touch(&self) {
        self.last
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Called by FFmpeg while it waits: true aborts the read.
    fn should_abort(&self) -> bool {
        let verdict = if self.stop.load(Ordering::Relaxed) {
            STOPPED
        } else {
            let now = self.epoch.elapsed().as_millis() as u64;
            let idle = now.saturating_sub(self.last.load(Ordering::Relaxed));
            if idle > self.timeout.as_millis() as u64 {
                TIMED_OUT
            } else {
                GO_ON
            }
        };
        if verdict != GO_ON {
            self.verdict.store(verdict, Ordering::Relaxed);
        }
        verdict != GO_ON
    }

    fn verdict(&self) -> u8 {
        self.verdict.load(Ordering::Relaxed)
    }
}

/// Standard input switched to non-blocking while a stream reads it; restored on drop.
#[derive(Debug)]
struct NonBlockingStdin {
    flags: libc::c_int,
}

impl NonBlockingStdin {
    /// Pipes and sockets only: a regular file never blocks, and a terminal is left alone.
    fn set() -> Option<Self> {
        // SAFETY: fstat and fcntl on descriptor 0 with a zeroed stat buffer; failures are
        // reported through the return values, which are checked.
        unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            if libc::fstat(0, &mut st) != 0 {
                return None;
            }
            let kind = st.st_mode & libc::S_IFMT;
            if kind != libc::S_IFIFO && kind != libc::S_IFSOCK {
                return None;
            }
            let flags = libc::fcntl(0, libc::F_GETFL);
            if flags < 0 || libc::fcntl(0, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
                return None;
            }
            Some(NonBlockingStdin { flags })
        }
    }
}

impl Drop for NonBlockingStdin {
    fn drop(&mut self) {
        // SAFETY: restores the flags read in `set` on descriptor 0.
        unsafe { libc::fcntl(0, libc::F_SETFL, self.flags) };
    }
}

/// A video stream opened for one forward pass.
pub struct FrameStream {
    source: StreamSource,
    // Dropped before `_stdin`: the input is closed before standard input turns blocking again.
    input: ffmpeg::format::context::Input,
    stream: usize,
    decoder: ffmpeg::decoder::Video,
    scaler: Option<Scaler>,
    watchdog: Arc<Watchdog>,
    _stdin: Option<NonBlockingStdin>,
    time_base: f64,
    frame_rate: Option<f64>,
    /// Seconds the container declares for the stream, when its header says.
    declared: Option<f64>,
    frame: ffmpeg::frame::Video,
    next_index: usize,
    first_pts: Option<i64>,
    last_time: f64,
    /// Set once reading has stopped; the decoder is then drained.
    ended: Option<StreamEnd>,
    decode_errors: usize,
    /// Whether the last video packet read came short of its size (FFmpeg flags it corrupt).
    last_packet_cut: bool,
}

impl fmt::Debug for FrameStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameStream")
            .field("source", &self.source)
            .field("frames", &self.next_index)
            .field("frame_rate", &self.frame_rate)
            .finish()
    }
}

/// What [`FrameStream::next_frame`] gives.
#[derive(Debug)]
pub enum Next {
    /// A frame.
    Frame(StreamFrame),
    /// No more frames, and why.
    End(StreamEnd),
}

impl FrameStream {
    /// Opens `source` and its best video stream. Raising `stop` ends the stream at its next
    /// read (opening included).
    pub fn open(
        source: &StreamSource,
        options: StreamOptions,
        stop: Arc<AtomicBool>,
    ) -> Result<Self> {
        init_ffmpeg();
        if let StreamSource::File(path) = source {
            check_file(path)?;
        }
        let name = source.ffmpeg_name()?;
        let stdin = match source {
            StreamSource::Stdin => NonBlockingStdin::set(),
            _ => None,
        };
        let watchdog = Arc::new(Watchdog {
            epoch: Instant::now(),
            last: AtomicU64::new(0),
            timeout: options.read_timeout,
            stop,
            verdict: AtomicU8::new(GO_ON),
        });
        let mut input = open_input(source, &name, &watchdog)?;
        let label = source.label();
        let (stream, decoder) = open_decoder(&mut input, &label, options.decode)?;
        let (time_base, frame_rate, declared) = {
            let st = input
                .stream(stream)
                .ok_or_else(|| source.error("video stream vanished"))?;
            let ratio = |r: ffmpeg::Rational| {
                (r.numerator() > 0 && r.denominator() > 0).then(|| f64::from(r))
            };
            let time_base = ratio(st.time_base()).unwrap_or(1.0 / 90_000.0);
            let frame_rate = ratio(st.avg_frame_rate()).or_else(|| ratio(st.rate()));
            // SAFETY: the context pointer is valid while `input` lives.
            let guessed = unsafe {
                (*input.as_ptr()).duration_estimation_method
                    == ffmpeg::ffi::AVDurationEstimationMethod::AVFMT_DURATION_FROM_BITRATE
            };
            let declared =
                (st.duration() > 0 && !guessed).then(|| st.duration() as f64 * time_base);
            (time_base, frame_rate, declared)
        };
        Ok(FrameStream {
            source: source.clone(),
            input,
            stream,
            decoder,
            scaler: None,
            watchdog,
            _stdin: stdin,
            time_base,
            frame_rate,
            declared,
            frame: ffmpeg::frame::Video::empty(),
            next_index: 0,
            first_pts: None,
            last_time: 0.0,
            ended: None,
            decode_errors: 0,
            last_packet_cut: false,
        })
    }

    /// Where the stream comes from.
    pub fn source(&self) -> &StreamSource {
        &self.source
    }

    /// Nominal frames per second (the stream's average rate, else its base rate), when known.
    pub fn frame_rate(&self) -> Option<f64> {
        self.frame_rate
    }

    /// Packets the decoder rejected so far (damaged data; their frames are missing).
    pub fn decode_errors(&self) -> usize {
        self.decode_errors
    }

    /// The next frame, converted to RGB when `want(index)` says so.
    pub fn next_frame(&mut self, want: impl FnOnce(usize) -> bool) -> Next {
        loop {
            match self.decoder.receive_frame(&mut self.frame) {
                Ok(()) => return self.emit(want),
                Err(ffmpeg::Error::Eof) => {
                    return Next::End(self.ended.clone().unwrap_or(StreamEnd::Finished))
                }
                Err(ffmpeg::Error::Other { errno }) if errno == libc::EAGAIN => {}
                Err(_) => self.decode_errors += 1,
            }
            if self.ended.is_some() {
                // Draining, yet the decoder wants input: it has nothing more to give.
                return Next::End(self.ended.clone().unwrap_or(StreamEnd::Finished));
            }
            self.watchdog.touch();
            match next_packet(&mut self.input) {
                Ok(packet) if packet.stream() != self.stream || packet_discarded(&packet) => {}
                Ok(packet) => {
                    self.last_packet_cut = packet.is_corrupt();
                    if self.decoder.send_packet(&packet).is_err() {
                        self.decode_errors += 1;
                    }
                }
                Err(e) => {
                    self.ended = Some(self.end_reason(e));
                    let _ = self.decoder.send_eof();
                }
            }
        }
    }

    fn emit(&mut self, want: impl FnOnce(usize) -> bool) -> Next {
        let index = self.next_index;
        self.next_index += 1;
        let time = match self.frame.timestamp() {
            Some(pts) => {
                let first = *self.first_pts.get_or_insert(pts);
                (pts - first) as f64 * self.time_base
            }
            // No timestamp: one nominal frame after the previous one.
            None => {
                if index == 0 {
                    0.0
                } else {
                    self.last_time + self.frame_rate.map_or(0.0, |r| 1.0 / r)
                }
            }
        };
        self.last_time = time;
        let image = if want(index) {
            match to_rgb(&mut self.scaler, &self.frame) {
                Ok(img) => Some(img),
                Err(reason) => {
                    // A frame we cannot convert ends the stream: what follows would be
                    // numbered wrong if it were skipped.
                    self.ended = Some(StreamEnd::Broken(format!("frame {index}: {reason}")));
                    let _ = self.decoder.send_eof();
                    while self.decoder.receive_frame(&mut self.frame).is_ok() {}
                    return Next::End(self.ended.clone().unwrap_or(StreamEnd::Finished));
                }
            }
        } else {
            None
        };
        Next::Frame(StreamFrame { index, time, image })
    }

    /// Why reading stopped with `e`.
    fn end_reason(&self, e: ffmpeg::Error) -> StreamEnd {
        match (e, self.watchdog.verdict()) {
            (_, STOPPED) => StreamEnd::Interrupted,
            (_, TIMED_OUT) => StreamEnd::Stalled(self.watchdog.timeout),
            (ffmpeg::Error::Eof, _) if self.last_packet_cut => {
                StreamEnd::Truncated("the data stops inside the last packet".into())
            }
            (ffmpeg::Error::Eof, _) => match self.declared {
                Some(declared) => {
                    // The decoded span ends one frame after the last frame's start.
                    let frame = self.frame_rate.map_or(0.0, |r| 1.0 / r);
                    let decoded = if self.next_index == 0 {
                        0.0
                    } else {
                        self.last_time + frame
                    };
                    // Two frames of slack: containers round durations and edit lists trim.
                    if declared - decoded > (2.0 * frame).max(0.1) {
                        StreamEnd::Truncated(format!(
                            "frames end at {decoded:.2} s, the container declares {declared:.2} s"
                        ))
                    } else {
                        StreamEnd::Finished
                    }
                }
                None => StreamEnd::Finished,
            },
            (e, _) => StreamEnd::Broken(e.to_string()),
        }
    }
}

/// The checks [`crate::VideoReader::open`] makes before FFmpeg sees a file.
fn check_file(path: &Path) -> Result<()> {
    let meta = std::fs::metadata(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if meta.is_dir() {
        return Err(Error::NotAVideo {
            path: path.to_path_buf(),
            reason: "is a directory".into(),
        });
    }
    if meta.len() == 0 {
        return Err(Error::EmptyFile {
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

/// Opens `name` with the watchdog as FFmpeg's interrupt callback, and probes its streams (a
/// transport stream's header does not give the codec's details).
fn open_input(
    source: &StreamSource,
    name: &CString,
    watchdog: &Arc<Watchdog>,
) -> Result<ffmpeg::format::context::Input> {
    let dog = Arc::clone(watchdog);
    let interrupt = ffmpeg::util::interrupt::new(Box::new(move || dog.should_abort()));
    let failed = |ret: i32| -> Error {
        match watchdog.verdict() {
            STOPPED => Error::Interrupted {
                path: source.label(),
            },
            TIMED_OUT => Error::Timeout {
                path: source.label(),
                waited: watchdog.timeout,
            },
            _ => source.error(ffmpeg::Error::from(ret)),
        }
    };
    watchdog.touch();
    // SAFETY: the context is allocated here and handed to avformat_open_input, which frees it
    // on failure (leaving it null); on success `wrap_with_interrupt` owns it together with the
    // callback's state, which lives as long as the context.
    unsafe {
        let mut ctx = ffmpeg::ffi::avformat_alloc_context();
        if ctx.is_null() {
            return Err(source.error("out of memory"));
        }
        (*ctx).interrupt_callback = interrupt.interrupt;
        let ret = ffmpeg::ffi::avformat_open_input(
            &mut ctx,
            name.as_ptr(),
            std::ptr::null(),
            std::ptr::null_mut(),
        );
        if ret < 0 {
            drop(interrupt.guard);
            return Err(failed(ret));
        }
        let input = ffmpeg::format::context::Input::wrap_with_interrupt(ctx, interrupt.guard);
        watchdog.touch();
        let ret = ffmpeg::ffi::avformat_find_stream_info(ctx, std::ptr::null_mut());
        if ret < 0 {
            return Err(failed(ret));
        }
        Ok(input)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse() {
        let p = |s: &str| StreamSource::parse(OsStr::new(s));
        assert_eq!(p("-"), StreamSource::Stdin);
        assert_eq!(
            p("udp://127.0.0.1:5000"),
            StreamSource::Url("udp://127.0.0.1:5000".into())
        );
        assert_eq!(
            p("rtsp+tcp://cam/1"),
            StreamSource::Url("rtsp+tcp://cam/1".into())
        );
        assert_eq!(p("clip.mp4"), StreamSource::File("clip.mp4".into()));
        assert_eq!(p("a:b.mp4"), StreamSource::File("a:b.mp4".into()));
        assert_eq!(p("./x://y"), StreamSource::File("./x://y".into()));
        assert_eq!(p("-").to_string(), "standard input");
    }
}
