//! Reading sampled frames out of a video file with FFmpeg (through video-rs's `ffmpeg` re-export),
//! decoding as little as possible.
//!
//! Opening a file scans its packets without decoding them (cheap: demuxing only) to build an
//! index of presentation timestamps and keyframes. Frame `i` is the `i`-th frame in presentation
//! order, which is what a decode-everything pipeline such as the tutorial's numbers it. To read a
//! set of frames, the reader visits them in presentation order and, for each, either decodes
//! forward from where it is or seeks to the keyframe before it, whichever decodes fewer packets;
//! non-reference frames that are not wanted are discarded inside the decoder, and only wanted
//! frames are converted to RGB.
//!
//! Container frame counts and video-rs's `seek_to_frame` are not trusted. If the index turns out
//! wrong (corrupt packets, missing timestamps, a truncated tail), the reader falls back to
//! counting the frames that really decode and reading by ordinal from the start: slower, never
//! wrong.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Once;

use image::RgbImage;
use video_rs::ffmpeg;
use video_rs::ffmpeg::codec::discard::Discard;
use video_rs::ffmpeg::format::Pixel;
use video_rs::ffmpeg::media::Type as MediaType;
use video_rs::ffmpeg::software::scaling;

use crate::{Error, Result};

/// Decoder settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DecodeOptions {
    /// FFmpeg decoder threads: 1 when clips are decoded in parallel (the data loader), 0 to let
    /// FFmpeg choose (one video at a time).
    pub threads: usize,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        DecodeOptions { threads: 1 }
    }
}

/// One packet of the video stream, in decode order.
#[derive(Debug, Clone, Copy)]
struct PacketInfo {
    pts: i64,
    dts: i64,
    key: bool,
}

/// The stream's packets: decode order, with the presentation order derived from timestamps.
#[derive(Debug)]
struct PacketIndex {
    packets: Vec<PacketInfo>,
    /// Presentation position -> decode position.
    by_pts: Vec<usize>,
}

impl PacketIndex {
    /// Decode position of the packet with this pts.
    fn decode_pos(&self, pts: i64) -> Option<usize> {
        self.by_pts
            .binary_search_by_key(&pts, |&d| self.packets[d].pts)
            .ok()
            .map(|p| self.by_pts[p])
    }

    /// The keyframe to start decoding from to reach the packet at decode position `d`: the last
    /// keyframe at or before it whose pts is not after the target's (so open-GOP leading frames
    /// start from the previous GOP).
    fn keyframe_for(&self, d: usize) -> usize {
        let pts = self.packets[d].pts;
        (0..=d)
            .rev()
            .find(|&k| self.packets[k].key && self.packets[k].pts <= pts)
            .unwrap_or(0)
    }
}

/// How frames are located.
#[derive(Debug)]
enum Mode {
    /// By pts through the packet index, with seeking.
    Indexed(PacketIndex),
    /// By ordinal of decoded frames from the start, with the count of decodable frames.
    Sequential(usize),
}

/// The index was contradicted by what the decoder produced.
struct IndexMismatch;

/// A video file opened for sampled reading.
pub struct VideoReader {
    path: PathBuf,
    options: DecodeOptions,
    input: ffmpeg::format::context::Input,
    stream: usize,
    decoder: ffmpeg::decoder::Video,
    mode: Mode,
    /// Decode position of the next packet to be read, when known.
    read_pos: Option<usize>,
    scaler: Option<Scaler>,
    stats: DecodeStats,
}

/// What a reader has done so far: to check that sampling decodes only what it needs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecodeStats {
    /// Packets sent to the decoder.
    pub packets_decoded: usize,
    /// Seeks made.
    pub seeks: usize,
    /// Packets the decoder rejected (corrupt data).
    pub decode_errors: usize,
}

impl std::fmt::Debug for VideoReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VideoReader")
            .field("path", &self.path)
            .field("frames", &self.num_frames())
            .field("indexed", &matches!(self.mode, Mode::Indexed(_)))
            .finish()
    }
}

pub(crate) fn init_ffmpeg() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        // Registration cannot fail on FFmpeg >= 4; errors surface when opening files.
        let _ = ffmpeg::init();
        // Our errors carry FFmpeg's messages; its own logging would only spam the loader.
        ffmpeg::util::log::set_level(ffmpeg::util::log::Level::Fatal);
    });
}

impl VideoReader {
    /// Opens `path` and indexes its video stream.
    pub fn open(path: impl AsRef<Path>, options: DecodeOptions) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let meta = std::fs::metadata(&path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        if meta.is_dir() {
            return Err(Error::NotAVideo {
                path,
                reason: "is a directory".into(),
            });
        }
        if meta.len() == 0 {
            return Err(Error::EmptyFile { path });
        }
        init_ffmpeg();
        let (input, stream, decoder) = open_stream(&path, options)?;
        let mut reader = VideoReader {
            path,
            options,
            input,
            stream,
            decoder,
            mode: Mode::Sequential(0),
            read_pos: Some(0),
            scaler: None,
            stats: DecodeStats::default(),
        };
        reader.mode = match reader.scan_packets()? {
            Some(index) => Mode::Indexed(index),
            None => reader.count_decodable()?,
        };
        Ok(reader)
    }

    /// The file this reader reads.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of frames, in decoded presentation order (what a full decode would yield).
    pub fn num_frames(&self) -> usize {
        match &self.mode {
            Mode::Indexed(ix) => ix.packets.len(),
            Mode::Sequential(n) => *n,
        }
    }

    /// Counters of the work done so far.
    pub fn stats(&self) -> DecodeStats {
        self.stats
    }

    /// Whether the reader fell back to sequential decoding (the packet index was unusable).
    pub fn is_sequential(&self) -> bool {
        matches!(self.mode, Mode::Sequential(_))
    }

    /// Decodes the frames at presentation positions `indices` (any order, repeats allowed)
    /// as RGB images, in the order asked.
    ///
    /// If the packet index proves wrong while reading, the reader switches to sequential mode,
    /// which may change [`VideoReader::num_frames`]; the error [`Error::Decode`] is returned
    /// only when a requested index is beyond the frames that really decode.
    pub fn frames(&mut self, indices: &[usize]) -> Result<Vec<RgbImage>> {
        let n = self.num_frames();
        if let Some(&bad) = indices.iter().find(|&&i| i >= n) {
            return Err(Error::Decode {
                path: self.path.clone(),
                reason: format!("frame {bad} requested, video has {n}"),
            });
        }
        if matches!(self.mode, Mode::Indexed(_)) {
            match self.frames_indexed(indices)? {
                Ok(images) => return Ok(images),
                Err(IndexMismatch) => {
                    self.mode = self.count_decodable()?;
                    let n = self.num_frames();
                    if let Some(&bad) = indices.iter().find(|&&i| i >= n) {
                        return Err(Error::Decode {
                            path: self.path.clone(),
                            reason: format!(
                                "frame {bad} requested, only {n} frames decode (file damaged?)"
                            ),
                        });
                    }
                }
            }
        }
        self.frames_sequential(indices)
    }

    fn decode_err(&self, reason: impl std::fmt::Display) -> Error {
        Error::Decode {
            path: self.path.clone(),
            reason: reason.to_string(),
        }
    }

    /// Reads every packet of the stream (no decoding). Returns `None` when the packets cannot
    /// serve as a frame index.
    fn scan_packets(&mut self) -> Result<Option<PacketIndex>> {
        let mut packets = Vec::new();
        let mut usable = true;
        loop {
            let packet = match next_packet(&mut self.input) {
                Ok(p) => p,
                Err(ffmpeg::Error::Eof) => break,
                // A read error mid-file (truncation, garbage): the index ends here, and is
                // verified by decoding.
                Err(_) => {
                    usable = false;
                    break;
                }
            };
            if packet.stream() != self.stream {
                continue;
            }
            let flags = packet.flags();
            // Edit-list trimmed packets decode but are never output.
            if packet_discarded(&packet) {
                continue;
            }
            match (packet.pts().or(packet.dts()), packet.dts().or(packet.pts())) {
                (Some(pts), Some(dts)) if !flags.contains(ffmpeg::packet::Flags::CORRUPT) => {
                    packets.push(PacketInfo {
                        pts,
                        dts,
                        key: packet.is_key(),
                    });
                }
                _ => usable = false,
            }
        }
        self.read_pos = None;
        if packets.is_empty() {
            return Ok(None);
        }
        let mut by_pts: Vec<usize> = (0..packets.len()).collect();
        by_pts.sort_by_key(|&d| packets[d].pts);
        let distinct = by_pts
            .windows(2)
            .all(|w| packets[w[0]].pts < packets[w[1]].pts);
        if !(usable && distinct && packets[0].key) {
            return Ok(None);
        }
        Ok(Some(PacketIndex { packets, by_pts }))
    }

    /// Decodes the whole stream once, counting frames; the fallback index.
    fn count_decodable(&mut self) -> Result<Mode> {
        self.rewind()?;
        let mut count = 0usize;
        self.decode_all(|_, _| {
            count += 1;
            false
        })?;
        if count == 0 {
            return Err(Error::NoFrames {
                path: self.path.clone(),
            });
        }
        Ok(Mode::Sequential(count))
    }

    /// Back to the first packet with a clean decoder: reopening is the one way that works for
    /// every container, and it is only needed on the slow path.
    fn rewind(&mut self) -> Result<()> {
        let (input, stream, decoder) = open_stream(&self.path, self.options)?;
        self.input = input;
        self.stream = stream;
        self.decoder = decoder;
        self.read_pos = Some(0);
        Ok(())
    }

    /// Decodes packets from the current position to the end of the stream, calling `on_frame`
    /// with each decoded frame and its output ordinal; stops early when it returns true.
    fn decode_all(
        &mut self,
        mut on_frame: impl FnMut(&ffmpeg::frame::Video, usize) -> bool,
    ) -> Result<()> {
        let mut frame = ffmpeg::frame::Video::empty();
        let mut ordinal = 0usize;
        let mut eof = false;
        while !eof {
            match next_packet(&mut self.input) {
                Ok(packet) if packet.stream() != self.stream => continue,
                Ok(packet) => {
                    self.stats.packets_decoded += 1;
                    if self.decoder.send_packet(&packet).is_err() {
                        self.stats.decode_errors += 1;
                    }
                }
                Err(_) => {
                    // End of file, or the point where a damaged file stops being readable.
                    eof = true;
                    let _ = self.decoder.send_eof();
                }
            }
            while self.decoder.receive_frame(&mut frame).is_ok() {
                let stop = on_frame(&frame, ordinal);
                ordinal += 1;
                if stop {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    fn frames_sequential(&mut self, indices: &[usize]) -> Result<Vec<RgbImage>> {
        self.rewind()?;
        let mut wanted: HashMap<usize, Option<RgbImage>> =
            indices.iter().map(|&i| (i, None)).collect();
        let last = indices.iter().copied().max().unwrap_or(0);
        let mut failure = None;
        let mut scaler = self.scaler.take();
        self.decode_all(|frame, ordinal| {
            if let Some(slot) = wanted.get_mut(&ordinal) {
                match to_rgb(&mut scaler, frame) {
                    Ok(img) => *slot = Some(img),
                    Err(e) => failure = Some(e),
                }
            }
            ordinal >= last || failure.is_some()
        })?;
        self.scaler = scaler;
        if let Some(e) = failure {
            return Err(self.decode_err(e));
        }
        collect_in_order(indices, &mut wanted)
            .ok_or_else(|| self.decode_err("fewer frames decode than when the video was counted"))
    }

    /// The fast path. `Ok(Err(IndexMismatch))` when the decoder contradicts the index.
    fn frames_indexed(
        &mut self,
        indices: &[usize],
    ) -> Result<std::result::Result<Vec<RgbImage>, IndexMismatch>> {
        let Mode::Indexed(index) = &self.mode else {
            unreachable!("frames_indexed is called in indexed mode only")
        };
        // Targets by pts, visited in presentation order.
        let mut targets: Vec<(i64, usize)> = indices
            .iter()
            .map(|&i| {
                let d = index.by_pts[i];
                (index.packets[d].pts, d)
            })
            .collect();
        targets.sort_unstable();
        targets.dedup();
        let target_pts: std::collections::HashSet<i64> = targets.iter().map(|t| t.0).collect();
        let plan: Vec<(i64, usize, usize)> = targets
            .iter()
            .map(|&(pts, d)| (pts, d, index.keyframe_for(d)))
            .collect();
        let packets: Vec<PacketInfo> = plan.iter().map(|p| index.packets[p.2]).collect();
        let mut got: HashMap<i64, RgbImage> = HashMap::with_capacity(targets.len());
        let single_thread = self.options.threads == 1;
        let mut frame = ffmpeg::frame::Video::empty();

        for (k, &(pts, d, key)) in plan.iter().enumerate() {
            if got.contains_key(&pts) {
                continue;
            }
            let must_seek = match self.read_pos {
                None => true,
                // Forward decoding reaches the target only if its packet is still ahead; it is
                // cheaper only if no keyframe lies between here and the target.
                Some(pos) => key > pos || d < pos,
            };
            let mut attempt = 0;
            if must_seek {
                self.seek_to(packets[k], attempt)?;
            }
            let mut eof = false;
            // Packets after a seek until the first keyframe cannot be decoded cleanly.
            let mut need_key = must_seek;
            while !got.contains_key(&pts) {
                if eof {
                    return Ok(Err(IndexMismatch));
                }
                match next_packet(&mut self.input) {
                    Ok(packet) if packet.stream() != self.stream => continue,
                    Ok(packet) => {
                        if packet_discarded(&packet) {
                            continue;
                        }
                        let Mode::Indexed(index) = &self.mode else {
                            unreachable!()
                        };
                        let Some(pos) = packet
                            .pts()
                            .or(packet.dts())
                            .and_then(|p| index.decode_pos(p))
                        else {
                            return Ok(Err(IndexMismatch));
                        };
                        self.read_pos = Some(pos + 1);
                        if need_key {
                            if pos > d {
                                // The demuxer landed after the target: seek another way.
                                attempt += 1;
                                if attempt > 2 {
                                    return Ok(Err(IndexMismatch));
                                }
                                self.seek_to(packets[k], attempt)?;
                                continue;
                            }
                            if !packet.is_key() {
                                continue;
                            }
                            need_key = false;
                        }
                        if single_thread {
                            let pkt_pts = index.packets[pos].pts;
                            self.decoder.skip_frame(if target_pts.contains(&pkt_pts) {
                                Discard::Default
                            } else {
                                Discard::NonReference
                            });
                        }
                        self.stats.packets_decoded += 1;
                        if self.decoder.send_packet(&packet).is_err() {
                            self.stats.decode_errors += 1;
                        }
                    }
                    Err(_) => {
                        eof = true;
                        self.read_pos = None;
                        let _ = self.decoder.send_eof();
                    }
                }
                while self.decoder.receive_frame(&mut frame).is_ok() {
                    let Some(fpts) = frame.timestamp() else {
                        return Ok(Err(IndexMismatch));
                    };
                    if target_pts.contains(&fpts) && !got.contains_key(&fpts) {
                        let img =
                            to_rgb(&mut self.scaler, &frame).map_err(|e| self.decode_err(e))?;
                        got.insert(fpts, img);
                    }
                }
            }
        }
        let Mode::Indexed(index) = &self.mode else {
            unreachable!()
        };
        let out = indices
            .iter()
            .map(|&i| got[&index.packets[index.by_pts[i]].pts].clone())
            .collect();
        Ok(Ok(out))
    }

    /// Seeks the demuxer backward to the keyframe `to` and resets the decoder. Demuxers index
    /// by different clocks (MP4 by a shifted decode time, AVI by frame number), so attempt 0
    /// seeks by the keyframe's pts, attempt 1 by its dts, and attempt 2 starts over from the
    /// beginning; the caller checks where each landed.
    fn seek_to(&mut self, to: PacketInfo, attempt: u8) -> Result<()> {
        self.stats.seeks += 1;
        let ts = match attempt {
            0 => to.pts,
            1 => to.dts,
            _ => return self.rewind(),
        };
        // SAFETY: the context pointer is valid for the reader's lifetime; av_seek_frame only
        // repositions the demuxer.
        let ret = unsafe {
            ffmpeg::ffi::av_seek_frame(
                self.input.as_mut_ptr(),
                self.stream as i32,
                ts,
                ffmpeg::ffi::AVSEEK_FLAG_BACKWARD,
            )
        };
        if ret < 0 {
            // Unseekable input: start over from the beginning instead.
            self.rewind()?;
        } else {
            self.decoder.flush();
            self.read_pos = None;
        }
        Ok(())
    }
}

/// Opens the container. Unlike `ffmpeg::format::input` this accepts any path the OS does
/// (non-UTF-8 names would panic there) and skips `avformat_find_stream_info`, which decodes
/// frames to fill in stream details, when the header already names the video codec and size:
/// the decoder finds the rest itself, and that probe costs as much as a few frames of decoding.
fn open_input(path: &Path) -> Result<ffmpeg::format::context::Input> {
    use std::os::unix::ffi::OsStrExt;
    let not_video = |reason: String| Error::NotAVideo {
        path: path.to_path_buf(),
        reason,
    };
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| not_video("path contains a NUL byte".into()))?;
    let mut ctx = std::ptr::null_mut();
    // SAFETY: `ctx` starts null as avformat_open_input requires; on failure it frees the
    // context and leaves `ctx` null, on success `Input::wrap` takes ownership (closing it on
    // drop), and the stream pointers read below belong to that live context.
    unsafe {
        let ret = ffmpeg::ffi::avformat_open_input(
            &mut ctx,
            c_path.as_ptr(),
            std::ptr::null(),
            std::ptr::null_mut(),
        );
        if ret < 0 {
            return Err(not_video(ffmpeg::Error::from(ret).to_string()));
        }
        let input = ffmpeg::format::context::Input::wrap(ctx);
        let streams = std::slice::from_raw_parts((*ctx).streams, (*ctx).nb_streams as usize);
        let header_suffices = streams.iter().any(|&st| {
            let par = &*(*st).codecpar;
            par.codec_type == ffmpeg::ffi::AVMediaType::AVMEDIA_TYPE_VIDEO
                && par.codec_id != ffmpeg::ffi::AVCodecID::AV_CODEC_ID_NONE
                && par.width > 0
                && par.height > 0
        });
        if !header_suffices {
            let ret = ffmpeg::ffi::avformat_find_stream_info(ctx, std::ptr::null_mut());
            if ret < 0 {
                return Err(not_video(ffmpeg::Error::from(ret).to_string()));
            }
        }
        Ok(input)
    }
}

/// Reads the next packet into a fresh `Packet`: `av_read_frame` does not release what a packet
/// already holds, so reusing one would leak every payload read.
pub(crate) fn next_packet(
    input: &mut ffmpeg::format::context::Input,
) -> std::result::Result<ffmpeg::Packet, ffmpeg::Error> {
    let mut packet = ffmpeg::Packet::empty();
    packet.read(input).map(|()| packet)
}

pub(crate) fn packet_discarded(packet: &ffmpeg::Packet) -> bool {
    packet.flags().bits() & ffmpeg::ffi::AV_PKT_FLAG_DISCARD != 0
}

/// Opens the container, picks its best video stream and opens a decoder for it. Other streams
/// are discarded at the demuxer so their packets are never read into memory.
fn open_stream(
    path: &Path,
    options: DecodeOptions,
) -> Result<(
    ffmpeg::format::context::Input,
    usize,
    ffmpeg::decoder::Video,
)> {
    let mut input = open_input(path)?;
    let (index, decoder) = open_decoder(&mut input, path, options)?;
    Ok((input, index, decoder))
}

/// Picks `input`'s best video stream and opens a decoder for it (`options.threads` threads);
/// other streams are discarded at the demuxer. `path` names the input in errors.
pub(crate) fn open_decoder(
    input: &mut ffmpeg::format::context::Input,
    path: &Path,
    options: DecodeOptions,
) -> Result<(usize, ffmpeg::decoder::Video)> {
    let Some(stream) = input.streams().best(MediaType::Video) else {
        let kinds: Vec<String> = input
            .streams()
            .map(|s| format!("{:?}", s.parameters().medium()).to_lowercase())
            .collect();
        return Err(Error::NoVideoStream {
            path: path.to_path_buf(),
            streams: if kinds.is_empty() {
                "none".into()
            } else {
                kinds.join(", ")
            },
        });
    };
    let index = stream.index();
    let time_base = stream.time_base();
    let mut ctx =
        ffmpeg::codec::context::Context::from_parameters(stream.parameters()).map_err(|e| {
            Error::NoDecoder {
                path: path.to_path_buf(),
                reason: e.to_string(),
            }
        })?;
    ctx.set_threading(ffmpeg::codec::threading::Config {
        kind: ffmpeg::codec::threading::Type::Frame,
        count: options.threads,
        ..Default::default()
    });
    let mut decoder = ctx.decoder();
    decoder.set_packet_time_base(time_base);
    let decoder = decoder.video().map_err(|e| Error::NoDecoder {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    for mut s in input.streams_mut() {
        if s.index() != index {
            // SAFETY: valid stream pointer owned by `input`.
            unsafe { (*s.as_mut_ptr()).discard = ffmpeg::ffi::AVDiscard::AVDISCARD_ALL };
        }
    }
    Ok((index, decoder))
}

/// An RGB converter and the (format, width, height) it converts from.
pub(crate) type Scaler = (scaling::Context, (Pixel, u32, u32));

/// Converts a decoded frame to packed RGB, reusing the scaler while the format is unchanged.
pub(crate) fn to_rgb(
    scaler: &mut Option<Scaler>,
    frame: &ffmpeg::frame::Video,
) -> std::result::Result<RgbImage, String> {
    let key = (frame.format(), frame.width(), frame.height());
    if key.1 == 0 || key.2 == 0 {
        return Err("decoded frame has zero size".into());
    }
    if scaler.as_ref().is_none_or(|s| s.1 != key) {
        let ctx = scaling::Context::get(
            key.0,
            key.1,
            key.2,
            Pixel::RGB24,
            key.1,
            key.2,
            scaling::Flags::BILINEAR,
        )
        .map_err(|e| format!("no conversion from {:?} to RGB: {e}", key.0))?;
        *scaler = Some((ctx, key));
    }
    let (ctx, _) = scaler.as_mut().expect("scaler was just set");
    let mut rgb = ffmpeg::frame::Video::empty();
    ctx.run(frame, &mut rgb)
        .map_err(|e| format!("RGB conversion failed: {e}"))?;
    let (w, h) = (key.1 as usize, key.2 as usize);
    let stride = rgb.stride(0);
    let data = rgb.data(0);
    let mut out = Vec::with_capacity(w * h * 3);
    for row in 0..h {
        out.extend_from_slice(&data[row * stride..row * stride + w * 3]);
    }
    Ok(RgbImage::from_raw(key.1, key.2, out).expect("buffer matches dimensions"))
}

/// The images for `indices` from `wanted`, or `None` if any is missing.
fn collect_in_order(
    indices: &[usize],
    wanted: &mut HashMap<usize, Option<RgbImage>>,
) -> Option<Vec<RgbImage>> {
    indices
        .iter()
        .map(|i| wanted.get(i).cloned().flatten())
        .collect()
}
