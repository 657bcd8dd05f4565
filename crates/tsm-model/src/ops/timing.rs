//! Where a step's time goes, by kind of op (`model_bench train --profile`). While
//! [`time_ops`] runs a closure on a thread, each op's forward and backward bodies add their wall
//! time to its totals, with the device synchronised on entry and exit so that a GPU op's kernels
//! count in the op that launched them (slower, so only while profiling: otherwise an op checks
//! one thread-local flag and nothing is synchronised). An op inside another counts in the
//! inner one only.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::Instant;

use candle_core::{Device, Result};

/// The kinds of op a step's time is split into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum OpKind {
    /// Convolutions' forward (with the bias and activation fused into them, in eval).
    ConvForward,
    /// Convolutions' input and weight gradients.
    ConvBackward,
    /// Training BatchNorm's statistics and normalisation (with its leaky ReLU).
    BatchNormForward,
    /// Training BatchNorm's gradient (through its leaky ReLU).
    BatchNormBackward,
    /// The temporal shift and its gradient, where they run as ops of their own.
    Shift,
    /// Max and average pooling and their gradients.
    Pool,
    /// Leaky ReLU and the residual add + leaky ReLU, and their gradients.
    Activation,
}

impl OpKind {
    /// A short label for tables.
    pub fn label(self) -> &'static str {
        match self {
            OpKind::ConvForward => "conv forward",
            OpKind::ConvBackward => "conv backward",
            OpKind::BatchNormForward => "BN forward",
            OpKind::BatchNormBackward => "BN backward",
            OpKind::Shift => "temporal shift",
            OpKind::Pool => "max and avg pools",
            OpKind::Activation => "activation, residual add",
        }
    }
}

/// Seconds spent in each kind of op.
pub type OpTimes = BTreeMap<OpKind, f64>;

struct Timer {
    totals: OpTimes,
    /// The ops being timed, innermost last: when each started and the time of the ops inside it.
    open: Vec<(Instant, f64)>,
}

thread_local! {
    static TIMER: RefCell<Option<Timer>> = const { RefCell::new(None) };
}

/// Runs `f` with this thread's ops timed by kind: its result and the totals.
pub fn time_ops<T>(f: impl FnOnce() -> Result<T>) -> Result<(T, OpTimes)> {
    TIMER.with(|t| {
        *t.borrow_mut() = Some(Timer {
            totals: OpTimes::new(),
            open: Vec::new(),
        })
    });
    let r = f();
    let timer = TIMER.with(|t| t.borrow_mut().take());
    Ok((r?, timer.map(|t| t.totals).unwrap_or_default()))
}

/// `f`, an op of `kind` on `device`, timed when [`time_ops`] is running on this thread.
pub(crate) fn timed<T>(kind: OpKind, device: &Device, f: impl FnOnce() -> Result<T>) -> Result<T> {
    if TIMER.with(|t| t.borrow().is_none()) {
        return f();
    }
    device.synchronize()?;
    TIMER.with(|t| {
        if let Some(t) = t.borrow_mut().as_mut() {
            t.open.push((Instant::now(), 0.0));
        }
    });
    let r = f().and_then(|y| device.synchronize().map(|()| y));
    TIMER.with(|t| {
        if let Some(t) = t.borrow_mut().as_mut() {
            if let Some((start, inner)) = t.open.pop() {
                let elapsed = start.elapsed().as_secs_f64();
                *t.totals.entry(kind).or_default() += elapsed - inner;
                if let Some(outer) = t.open.last_mut() {
                    outer.1 += elapsed;
                }
            }
        }
    });
    r
}
