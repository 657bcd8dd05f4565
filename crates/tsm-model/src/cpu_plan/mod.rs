//! The fused backbone's forward on x86-64 CPUs with AVX2 and FMA: the whole network in one
//! blocked layout, every step one pass over memory, buffers reused across calls.
//!
//! Built by [`crate::resnet::ResNetTweaksTsm::fuse`] when the weights are f32 on the CPU and the
//! network fits the kernels (1x1 and 3x3 convs, output channels in multiples of 16, input
//! channels in multiples of 8 after the stem); otherwise the fused model runs the per-op path (`ops`), which computes the same values.
//! What it saves over that path (measured in `cargo xtask bench model`): the im2col and packing
//! copies around each gemm, the NCHW round trip of each layer, the separate passes of the
//! temporal shift (read in place by the next conv) and of the residual add and activation
//! (done in the conv that produces the branch), and the fresh pages of every activation
//! (the plan keeps its buffers for the next call).

mod kernels;
#[cfg(test)]
mod tests;

use std::sync::Mutex;

use candle_core::{CpuStorage, DType, Result, Storage, Tensor};

use crate::ops::shift_folds;
use crate::resnet::Recorder;
use kernels::{BlockSources, Blocked, PackedConv, LANES};

/// One conv of the plan.
struct Conv {
    packed: PackedConv,
    act: bool,
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
    stem: Vec<Conv>,
    blocks: Vec<Block>,
    out_channels: usize,
    buffers: BufferPool,
}

impl std::fmt::Debug for CpuPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuPlan")
            .field("blocks", &self.blocks.len())
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
    /// input channels (3) are padded to a block.
    fn new(d: &ConvDesc, first: bool) -> Result<Option<Self>> {
        if d.weight.dtype() != DType::F32 || !d.weight.device().is_cpu() {
            return Ok(None);
        }
        let (o, c, k, k2) = d.weight.dims4()?;
        let fits = k == k2
            && (k == 1 || k == 3)
            && o.is_multiple_of(kernels::OUT_TILE)
            && (first || c.is_multiple_of(LANES));
        if !fits {
            return Ok(None);
        }
        let w = d.weight.flatten_all()?.to_vec1::<f32>()?;
        let b = d.bias.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        Ok(Some(Self {
            packed: PackedConv::new(&w, &b, [o, c, k, k], d.stride),
            act: d.act,
        }))
    }

    /// The profile's label: as the per-op path's, and what the pass also does.
    fn label(&self, h: usize, w: usize, shifted: bool, residual: bool, act: bool) -> String {
        let p = &self.packed;
        format!(
            "conv {k}x{k} s{} {}->{} {h}x{w} {}+bias{}{}",
            p.stride,
            p.cin,
            p.cout,
            if shifted { "+shift" } else { "" },
            if residual { "+add" } else { "" },
            if act { "+act" } else { "" },
            k = p.k,
        )
    }
}

/// The plan's conv for `d`, or `None` (return it) when the kernels cannot run it.
macro_rules! conv_or_none {
    ($d:expr, $first:expr) => {
        match Conv::new($d, $first)? {
            Some(c) => c,
            None => return Ok(None),
        }
    };
}

impl CpuPlan {
    /// The plan of a fused backbone (stem convs, then blocks; `shift`: `(num_seg, ratio)`), or
    /// `None` when this CPU or network does not fit the kernels.
    pub(crate) fn new(
        stem: &[ConvDesc],
        blocks: &[BlockDesc],
        shift: Option<(usize, f64)>,
    ) -> Result<Option<Self>> {
        if !kernels::supported() {
            return Ok(None);
        }
        let mut stem_convs = Vec::new();
        for (i, d) in stem.iter().enumerate() {
            stem_convs.push(conv_or_none!(d, i == 0));
        }
        let mut plan_blocks = Vec::new();
        for b in blocks {
            let mut branch = Vec::new();
            for d in &b.branch {
                branch.push(conv_or_none!(d, false));
            }
            let short = match &b.short {
                None => Shortcut::Identity,
                Some((d, pool_first)) => Shortcut::Conv {
                    conv: conv_or_none!(d, false),
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
            stem: stem_convs,
            blocks: plan_blocks,
            out_channels,
            buffers: BufferPool::default(),
        }))
    }

    /// Feature maps `[n, C, h', w']` of frames `[n, 3, h, w]` (f32, on the CPU).
    pub(crate) fn forward(&self, frames: &Tensor, rec: &mut Recorder) -> Result<Tensor> {
        let (n, c, h, w) = frames.dims4()?;
        let cin = self.stem.first().map_or(0, |s| s.packed.cin);
        if c != cin {
            candle_core::bail!("frames have {c} channels, the model takes {cin}")
        }
        let frames = frames.contiguous()?;
        let (storage, layout) = frames.storage_and_layout();
        let (Storage::Cpu(CpuStorage::F32(data)), Some((a, b))) =
            (&*storage, layout.contiguous_offsets())
        else {
            candle_core::bail!("the CPU plan takes contiguous f32 frames on the CPU")
        };
        let mut cur = self.alloc(n, c.div_ceil(LANES), h, w);
        rec.run(
            || "to blocked layout".into(),
            || {
                kernels::to_blocked(&data[a..b], c, &mut cur);
                Ok(())
            },
        )?;
        drop(storage);
        for conv in &self.stem {
            let next = self.conv(conv, &cur, None, None, conv.act, rec)?;
            self.give(std::mem::replace(&mut cur, next));
        }
        let (ph, pw) = (kernels::max_pooled(cur.h), kernels::max_pooled(cur.w));
        let mut pooled = self.alloc(n, cur.cb, ph, pw);
        rec.run(
            || "max pool 3x3".into(),
            || {
                kernels::max_pool3x3_s2(&cur, &mut pooled);
                Ok(())
            },
        )?;
        self.give(std::mem::replace(&mut cur, pooled));
        for block in &self.blocks {
            let next = self.block(block, &cur, rec)?;
            self.give(std::mem::replace(&mut cur, next));
        }
        let maps = rec.run(
            || "from blocked layout".into(),
            || Ok(kernels::from_blocked(&cur, self.out_channels)),
        )?;
        let dims = (n, self.out_channels, cur.h, cur.w);
        self.give(cur);
        Tensor::from_vec(maps, dims, frames.device())
    }

    /// One residual block on `x`.
    fn block(&self, block: &Block, x: &Blocked, rec: &mut Recorder) -> Result<Blocked> {
        let short = match &block.short {
            Shortcut::Identity => None,
            Shortcut::Conv { conv, pool_first } => {
                let pooled = if *pool_first {
                    let mut p = self.alloc(x.n, x.cb, x.h.div_ceil(2), x.w.div_ceil(2));
                    rec.run(
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
                let s = self.conv(conv, pooled.as_ref().unwrap_or(x), None, None, false, rec)?;
                if let Some(p) = pooled {
                    self.give(p);
                }
                Some(s)
            }
        };
        let mut y: Option<Blocked> = None;
        for (i, conv) in block.branch.iter().enumerate() {
            let last = i + 1 == block.branch.len();
            let sources = if i == 0 { block.sources } else { None };
            // the last conv adds the (unshifted) shortcut, then the activation
            let residual = last.then(|| short.as_ref().unwrap_or(x));
            let input = y.as_ref().unwrap_or(x);
            let out = self.conv(conv, input, sources, residual, conv.act || last, rec)?;
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
        &self,
        conv: &Conv,
        x: &Blocked,
        sources: Option<BlockSources>,
        residual: Option<&Blocked>,
        act: bool,
        rec: &mut Recorder,
    ) -> Result<Blocked> {
        let p = &conv.packed;
        let mut out = self.alloc(x.n, p.cout / LANES, p.out_size(x.h), p.out_size(x.w));
        rec.run(
            || conv.label(x.h, x.w, sources.is_some(), residual.is_some(), act),
            || {
                p.run(x, sources, residual, act, &mut out);
                Ok(())
            },
        )?;
        Ok(out)
    }

    fn alloc(&self, n: usize, cb: usize, h: usize, w: usize) -> Blocked {
        Blocked {
            n,
            cb,
            h,
            w,
            data: self.buffers.take(Blocked::len(n, cb, h, w)),
        }
    }

    fn give(&self, x: Blocked) {
        self.buffers.give(x.data);
    }
}

/// Activation buffers kept between calls: a pass frees what the next one allocates, so after
/// the first call no pass maps (and the kernel zeroes) fresh pages.
#[derive(Default)]
struct BufferPool(Mutex<Vec<Vec<f32>>>);

impl BufferPool {
    /// A buffer of `len` elements, contents unspecified: the smallest kept one that holds
    /// `len`, else a new one in place of the largest.
    fn take(&self, len: usize) -> Vec<f32> {
        let mut pool = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let fit = pool
            .iter()
            .enumerate()
            .filter(|(_, b)| b.capacity() >= len)
            .min_by_key(|(_, b)| b.capacity())
            .map(|(i, _)| i);
        let largest = || pool.iter().enumerate().max_by_key(|(_, b)| b.capacity());
        match fit.or_else(|| largest().map(|(i, _)| i)) {
            Some(i) if fit.is_some() => {
                let mut buf = pool.swap_remove(i);
                buf.resize(len, 0.0);
                buf
            }
            // none holds it: replace the largest (a first pass, or a larger batch)
            Some(i) => {
                drop(pool.swap_remove(i));
                vec![0.0; len]
            }
            None => vec![0.0; len],
        }
    }

    fn give(&self, buf: Vec<f32>) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(buf);
    }
}
