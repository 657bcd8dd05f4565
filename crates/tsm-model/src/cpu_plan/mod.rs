//! The fused backbone's forward on x86-64 CPUs (AVX2 and FMA, or AVX-512 for f32; AVX-512
//! BF16 for bf16): the whole network in one blocked layout, every step one pass over memory,
//! buffers reused across calls.
//!
//! Built by [`crate::resnet::ResNetTweaksTsm::fuse`] when the weights are f32 or bf16 on the
//! CPU, this CPU has a [`Kernel`] for them and the network fits the kernels (1x1 and 3x3 convs,
//! output channels in multiples of 16, input channels in multiples of 8 after the stem);
//! otherwise the fused model runs the per-op path (`ops`), which computes the same values.
//! What it saves over that path (measured in `cargo xtask bench model`): the im2col and packing
//! copies around each gemm (most convs read their input in place), the NCHW round trip of each
//! layer, the separate passes of the temporal shift (read in place by the next conv) and of the
//! residual add and activation (done in the conv that produces the branch), and the fresh pages
//! of every activation (the plan keeps its buffers for the next call).

mod amx_conv;
mod kernels;
#[cfg(test)]
mod tests;

use std::sync::Mutex;

use candle_core::{CpuStorage, DType, Result, Storage, Tensor};

use crate::ops::shift_folds;
use crate::resnet::Recorder;
use kernels::{BlockSources, Blocked, Elem, Gather, PackedConv};
pub(crate) use kernels::{Kernel, NoKernel};

/// One conv of the plan.
struct Conv {
    packed: PackedConv,
    act: bool,
    /// The conv as declared, `(k, stride, in channels)`, where the plan runs it on gathered
    /// input (as a 1x1 conv).
    declared: Option<(usize, usize, usize)>,
}

/// A residual block: its branch (the first conv reads the shifted input, the last adds the
/// shortcut before its activation) and shortcut.
struct Block {
    branch: Vec<Conv>,
    short: Shortcut,
    /// The temporal shift of the branch's input; `None` without the shift.
    sources: Option<BlockSources>,
}

enum Shortcut {
    Identity,
    Conv { conv: Conv, pool_first: bool },
}

/// The plan of a fused backbone (see the module docs).
pub(crate) struct CpuPlan {
    /// How the frames enter the layout: gathered for the first conv where its taps fit a few
    /// blocks; that conv is then 1x1.
    gather: Gather,
    /// The frames' channels.
    in_channels: usize,
    stem: Vec<Conv>,
    blocks: Vec<Block>,
    out_channels: usize,
    /// The activations between calls, in the weights' dtype (f32, or bf16 bits).
    arena: Activations,
}

/// A plan's kept activation buffers, of its kernel's element type.
enum Activations {
    F32(KeptArena<f32>),
    Bf16(KeptArena<u16>),
}

impl std::fmt::Debug for CpuPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuPlan")
            .field("blocks", &self.blocks.len())
            .field("kernel", &self.stem.first().map(|c| c.packed.kernel()))
            .finish_non_exhaustive()
    }
}

/// What [`CpuPlan::new`] needs of one fused conv layer.
pub(crate) struct ConvDesc<'a> {
    pub(crate) weight: &'a Tensor,
    pub(crate) bias: &'a Tensor,
    pub(crate) stride: usize,
    pub(crate) act: bool,
}

/// What [`CpuPlan::new`] needs of one block: its branch convs, and its shortcut conv (with
/// whether a 2x2 average pool comes first), `None` for the identity.
pub(crate) struct BlockDesc<'a> {
    pub(crate) branch: Vec<ConvDesc<'a>>,
    pub(crate) short: Option<(ConvDesc<'a>, bool)>,
}

impl Conv {
    /// `None` when the kernels cannot run this layer; `first`: the stem's first conv, whose
    /// input channels (3) are padded to a block. `gather`: that conv's input is gathered
    /// (see [`Gather`]), and it runs as the 1x1 conv over it.
    fn new(d: &ConvDesc, first: bool, gather: Gather, kernel: Kernel) -> Result<Option<Self>> {
        if !d.weight.device().is_cpu() {
            return Ok(None);
        }
        let (o, c, k, k2) = d.weight.dims4()?;
        let fits = k == k2
            && (k == 1 || k == 3)
            && o.is_multiple_of(kernel.cout_multiple())
            && (first || c.is_multiple_of(kernel.lanes()));
        if !fits {
            return Ok(None);
        }
        let w = d
            .weight
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let b = d.bias.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        if gather == Gather::NONE {
            return Ok(Some(Self {
                packed: PackedConv::new(&w, &b, [o, c, k, k], d.stride, kernel),
                act: d.act,
                declared: None,
            }));
        }
        // [o][c][kh][kw] -> [o][(kh * k + kw) * c + ch], the gathered lanes' order
        let kk = k * k;
        let mut w1 = vec![0.0; o * c * kk];
        for (i, &v) in w.iter().enumerate() {
            let (oc, ch, tap) = (i / (c * kk), i / kk % c, i % kk);
            w1[oc * c * kk + tap * c + ch] = v;
        }
        Ok(Some(Self {
            packed: PackedConv::new(&w1, &b, [o, c * kk, 1, 1], 1, kernel),
            act: d.act,
            declared: Some((k, d.stride, c)),
        }))
    }

    /// The profile's label: as the per-op path's (`h x w` the declared input), and what the
    /// pass also does.
    fn label(&self, h: usize, w: usize, shifted: bool, residual: bool, act: bool) -> String {
        let p = &self.packed;
        let (k, stride, cin) = self.declared.unwrap_or((p.k, p.stride, p.cin));
        format!(
            "conv {k}x{k} s{stride} {cin}->{} {h}x{w} {}+bias{}{}",
            p.cout,
            if shifted { "+shift" } else { "" },
            if residual { "+add" } else { "" },
            if act { "+act" } else { "" },
        )
    }
}

/// The plan's conv for `d`, or `None` (return it) when the kernels cannot run it.
macro_rules! conv_or_none {
    ($d:expr, $first:expr, $kernel:expr) => {
        conv_or_none!($d, $first, Gather::NONE, $kernel)
    };
    ($d:expr, $first:expr, $gather:expr, $kernel:expr) => {
        match Conv::new($d, $first, $gather, $kernel)? {
            Some(c) => c,
            None => return Ok(None),
        }
    };
}

impl CpuPlan {
    /// The plan of a fused backbone (stem convs, then blocks; `shift`: `(num_seg, ratio)`)
    /// with `kernel` (which must run on this CPU and take the weights' dtype), or `None` when
    /// the network does not fit the kernels.
    pub(crate) fn new(
        stem: &[ConvDesc],
        blocks: &[BlockDesc],
        shift: Option<(usize, f64)>,
        kernel: Kernel,
    ) -> Result<Option<Self>> {
        if !kernel.runs_here() {
            candle_core::bail!("the CPU plan's {kernel:?} kernel does not run on this CPU")
        }
        let Some(first) = stem.first() else {
            return Ok(None);
        };
        let (_, in_channels, k, _) = first.weight.dims4()?;
        // gathered when the first conv's taps fit one 32-channel block
        let gather = if k > 1 && k * k * in_channels <= 32 {
            Gather {
                k,
                stride: first.stride,
                pad: (k - 1) / 2,
            }
        } else {
            Gather::NONE
        };
        let mut stem_convs = vec![conv_or_none!(first, true, gather, kernel)];
        for d in &stem[1..] {
            stem_convs.push(conv_or_none!(d, false, kernel));
        }
        let mut plan_blocks = Vec::new();
        for b in blocks {
            let mut branch = Vec::new();
            for d in &b.branch {
                branch.push(conv_or_none!(d, false, kernel));
            }
            let short = match &b.short {
                None => Shortcut::Identity,
                Some((d, pool_first)) => Shortcut::Conv {
                    conv: conv_or_none!(d, false, kernel),
                    pool_first: *pool_first,
                },
            };
            let Some(cin) = branch.first().map(|c| c.packed.cin) else {
                return Ok(None);
            };
            let sources = match shift {
                None => None,
                Some((num_seg, ratio)) => {
                    let (c1, c2) = shift_folds(cin, ratio);
                    Some(BlockSources { num_seg, c1, c2 })
                }
            };
            plan_blocks.push(Block {
                branch,
                short,
                sources,
            });
        }
        let Some(out_channels) = plan_blocks
            .last()
            .and_then(|b| b.branch.last())
            .or(stem_convs.last())
            .map(|c| c.packed.cout)
        else {
            return Ok(None);
        };
        Ok(Some(Self {
            gather,
            in_channels,
            stem: stem_convs,
            blocks: plan_blocks,
            out_channels,
            arena: match kernel {
                Kernel::Bf16Avx512 | Kernel::Bf16Amx => Activations::Bf16(KeptArena::default()),
                Kernel::F32Avx2 | Kernel::F32Avx512 => Activations::F32(KeptArena::default()),
            },
        }))
    }

    /// The weights' dtype, which the plan takes (its feature maps are f32).
    pub(crate) fn dtype(&self) -> DType {
        match self.arena {
            Activations::F32(_) => DType::F32,
            Activations::Bf16(_) => DType::BF16,
        }
    }

    /// Feature maps `[n, C, h', w']` of frames `[n, 3, h, w]` (on the CPU, in the plan's
    /// dtype), in f32.
    pub(crate) fn forward(&self, frames: &Tensor, rec: &mut Recorder) -> Result<Tensor> {
        match &self.arena {
            Activations::F32(kept) => self.forward_in(kept, frames, rec),
            Activations::Bf16(kept) => self.forward_in(kept, frames, rec),
        }
    }

    /// [`Self::forward`] with activations of `E`, kept in `kept`.
    fn forward_in<E: Elem>(
        &self,
        kept: &KeptArena<E>,
        frames: &Tensor,
        rec: &mut Recorder,
    ) -> Result<Tensor> {
        let (n, c, h, w) = frames.dims4()?;
        if c != self.in_channels {
            candle_core::bail!(
                "frames have {c} channels, the model takes {}",
                self.in_channels
            )
        }
        // f32 and bf16 frames are read as they are (rounded to bf16 for the bf16 kernel as
        // they enter the blocked layout): a copy would be fresh pages on every call
        let frames = match frames.dtype() {
            DType::F32 | DType::BF16 => frames.contiguous()?,
            _ => frames.to_dtype(DType::F32)?,
        };
        let (storage, layout) = frames.storage_and_layout();
        let Some((a, b)) = layout.contiguous_offsets() else {
            candle_core::bail!("the CPU plan takes contiguous frames")
        };
        let key = (n, c, h, w);
        let lanes = self.stem.first().map_or(1, |s| s.packed.kernel().lanes());
        let mut pass = Pass {
            arena: kept.take(key),
            rec,
            lanes,
            frame_size: (h, w),
        };
        let g = self.gather;
        let cb = (g.k * g.k * c).div_ceil(lanes);
        let mut cur = pass.alloc(n, cb, g.out_size(h), g.out_size(w));
        pass.rec.run(
            || "to blocked layout".into(),
            || {
                let dims = [c, h, w];
                match &*storage {
                    Storage::Cpu(CpuStorage::F32(x)) => {
                        kernels::to_blocked(&x[a..b], dims, g, &mut cur)
                    }
                    Storage::Cpu(CpuStorage::BF16(x)) => {
                        kernels::to_blocked(&x[a..b], dims, g, &mut cur)
                    }
                    _ => candle_core::bail!("the CPU plan takes f32 or bf16 frames on the CPU"),
                }
                Ok(())
            },
        )?;
        drop(storage);
        for conv in &self.stem {
            let next = pass.conv(conv, &cur, None, None, conv.act)?;
            pass.give(std::mem::replace(&mut cur, next));
        }
        let (ph, pw) = (kernels::max_pooled(cur.h), kernels::max_pooled(cur.w));
        let mut pooled = pass.alloc(n, cur.cb, ph, pw);
        pass.rec.run(
            || "max pool 3x3".into(),
            || {
                kernels::max_pool3x3_s2(&cur, &mut pooled);
                Ok(())
            },
        )?;
        pass.give(std::mem::replace(&mut cur, pooled));
        for block in &self.blocks {
            let next = pass.block(block, &cur)?;
            pass.give(std::mem::replace(&mut cur, next));
        }
        let maps = pass.rec.run(
            || "from blocked layout".into(),
            || Ok(kernels::from_blocked(&cur, self.out_channels)),
        )?;
        let dims = (n, self.out_channels, cur.h, cur.w);
        pass.give(cur);
        kept.put(pass.arena);
        Tensor::from_vec(maps, dims, frames.device())
    }
}

/// One forward pass: its activation memory and profile.
struct Pass<'a, 'r, E> {
    arena: Arena<E>,
    rec: &'a mut Recorder<'r>,
    /// Channels per block of the plan's kernel.
    lanes: usize,
    /// The frames' `(h, w)`: the declared input of a conv on gathered input.
    frame_size: (usize, usize),
}

impl<E: Elem> Pass<'_, '_, E> {
    /// One residual block on `x`.
    fn block(&mut self, block: &Block, x: &Blocked<E>) -> Result<Blocked<E>> {
        let short = match &block.short {
            Shortcut::Identity => None,
            Shortcut::Conv { conv, pool_first } => {
                let pooled = if *pool_first {
                    let mut p = self.alloc(x.n, x.cb, x.h.div_ceil(2), x.w.div_ceil(2));
                    self.rec.run(
                        || "avg pool 2x2".into(),
                        || {
                            kernels::avg_pool2x2_ceil(x, &mut p);
                            Ok(())
                        },
                    )?;
                    Some(p)
                } else {
                    None
                };
                let s = self.conv(conv, pooled.as_ref().unwrap_or(x), None, None, false)?;
                if let Some(p) = pooled {
                    self.give(p);
                }
                Some(s)
            }
        };
        let mut y: Option<Blocked<E>> = None;
        for (i, conv) in block.branch.iter().enumerate() {
            let last = i + 1 == block.branch.len();
            let sources = if i == 0 { block.sources } else { None };
            // the last conv adds the (unshifted) shortcut, then the activation
            let residual = last.then(|| short.as_ref().unwrap_or(x));
            let input = y.as_ref().unwrap_or(x);
            let out = self.conv(conv, input, sources, residual, conv.act || last)?;
            if let Some(old) = y.replace(out) {
                self.give(old);
            }
        }
        if let Some(s) = short {
            self.give(s);
        }
        match y {
            Some(y) => Ok(y),
            None => candle_core::bail!("a block without convolutions"),
        }
    }

    fn conv(
        &mut self,
        conv: &Conv,
        x: &Blocked<E>,
        sources: Option<BlockSources>,
        residual: Option<&Blocked<E>>,
        act: bool,
    ) -> Result<Blocked<E>> {
        let p = &conv.packed;
        let mut out = self.alloc(x.n, p.cout / self.lanes, p.out_size(x.h), p.out_size(x.w));
        self.rec.run(
            || {
                let (h, w) = conv.declared.map_or((x.h, x.w), |_| self.frame_size);
                conv.label(h, w, sources.is_some(), residual.is_some(), act)
            },
            || {
                p.run(x, sources, residual, act, &mut out);
                Ok(())
            },
        )?;
        Ok(out)
    }

    fn alloc(&mut self, n: usize, cb: usize, h: usize, w: usize) -> Blocked<E> {
        let lanes = self.lanes;
        let len = Blocked::<E>::len(n, cb, h, w, lanes) + Blocked::<E>::read_past(lanes);
        let (slot, data) = self.arena.take(len);
        Blocked {
            n,
            cb,
            h,
            w,
            lanes,
            data,
            slot,
        }
    }

    fn give(&mut self, x: Blocked<E>) {
        self.arena.give(x.slot, x.data);
    }
}

/// The activation buffers of a pass, kept for the next pass on input of the same size.
///
/// The first pass on a size allocates each buffer as it needs it (reusing a freed one that is
/// large enough, the smallest such) and records which buffer served each request; later passes
/// on that size make the same requests with the same lifetimes and replay the record, so they
/// allocate nothing and no page is mapped (and zeroed by the kernel) again. A pass on another
/// size records anew, freeing the old buffers. Concurrent passes on one model: one gets the
/// kept buffers, the others allocate their own.
struct Arena<E> {
    /// The input `[n, c, h, w]` the record is for.
    key: (usize, usize, usize, usize),
    /// Every buffer; `None` while lent out.
    slots: Vec<Option<Vec<E>>>,
    /// The slot that served each request, in order.
    record: Vec<usize>,
    /// Replaying `record` (else recording it); the next request's index.
    replay: bool,
    next: usize,
}

impl<E: Copy + Default> Arena<E> {
    fn new(key: (usize, usize, usize, usize)) -> Self {
        Self {
            key,
            slots: Vec::new(),
            record: Vec::new(),
            replay: false,
            next: 0,
        }
    }

    /// A slot and its buffer of `len` elements, contents unspecified.
    fn take(&mut self, len: usize) -> (usize, Vec<E>) {
        let replayed = self
            .replay
            .then(|| self.record.get(self.next).copied())
            .flatten();
        self.next += 1;
        let slot = match replayed.filter(|&s| self.slots.get(s).is_some_and(Option::is_some)) {
            Some(s) => s,
            None => {
                // recording, or (never expected) a replay that does not match: record afresh
                if self.replay {
                    self.replay = false;
                    self.record.truncate(self.next - 1);
                }
                let fit = self
                    .slots
                    .iter()
                    .enumerate()
                    .filter_map(|(i, b)| b.as_ref().map(|b| (i, b.len())))
                    .filter(|&(_, have)| have >= len)
                    .min_by_key(|&(_, have)| have)
                    .map(|(i, _)| i);
                let s = fit.unwrap_or_else(|| {
                    self.slots.push(Some(Vec::new()));
                    self.slots.len() - 1
                });
                self.record.push(s);
                s
            }
        };
        // grown only when first used for a larger activation: its length stays the largest
        // it has served, so a replay never writes zeros into it
        let mut buf = self.slots[slot].take().unwrap_or_default();
        if buf.len() < len {
            buf.resize(len, E::default());
        }
        (slot, buf)
    }

    fn give(&mut self, slot: usize, buf: Vec<E>) {
        if let Some(s) = self.slots.get_mut(slot) {
            *s = Some(buf);
        }
    }
}

/// Where a model keeps its [`Arena`] between passes.
struct KeptArena<E>(Mutex<Option<Arena<E>>>);

impl<E> Default for KeptArena<E> {
    fn default() -> Self {
        Self(Mutex::new(None))
    }
}

impl<E: Copy + Default> KeptArena<E> {
    /// The kept arena for input `key`, set to replay; a new one for another size, or while
    /// another pass holds it.
    fn take(&self, key: (usize, usize, usize, usize)) -> Arena<E> {
        let kept = self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
        match kept {
            Some(mut a) if a.key == key => {
                a.replay = true;
                a.next = 0;
                a
            }
            _ => Arena::new(key),
        }
    }

    /// Keeps `arena` for the next pass.
    fn put(&self, arena: Arena<E>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(arena);
    }
}
