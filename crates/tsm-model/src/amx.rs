//! What every AMX kernel of the crate shares: whether the tiles may be used, and their one
//! configuration (all eight tiles 16 rows of 64 bytes).

use std::arch::x86_64::__cpuid_count;

/// Whether the CPU has AMX-BF16 and the OS lets this process use the tiles (Linux's
/// `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`, asked once).
pub(crate) fn usable() -> bool {
    static USABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *USABLE.get_or_init(|| {
        // CPUID.(7, 0):EDX bit 22 AMX-BF16, bit 24 AMX-TILE
        let edx = __cpuid_count(7, 0).edx;
        let cpu = edx & (1 << 22) != 0 && edx & (1 << 24) != 0;
        cpu && request_permission()
    })
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn request_permission() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a plain syscall with two integer arguments.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn request_permission() -> bool {
    false
}

/// Palette 1, tiles 0-7 all 16 rows of 64 bytes.
#[repr(C, align(64))]
struct Config([u8; 64]);

/// The tiles of this thread, configured ([`usable`] has returned true) until dropped, which
/// returns them to their initial state (smaller context switches).
pub(crate) struct Tiles(());

impl Tiles {
    pub(crate) fn configure() -> Self {
        assert!(usable(), "AMX tiles configured without the OS's permission");
        let mut cfg = Config([0; 64]);
        cfg.0[0] = 1;
        for t in 0..8 {
            cfg.0[16 + 2 * t] = 64; // bytes per row
            cfg.0[48 + t] = 16; // rows
        }
        // SAFETY: a valid palette-1 configuration; the tiles are this thread's to use.
        unsafe { std::arch::asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack)) };
        Self(())
    }
}

impl Drop for Tiles {
    fn drop(&mut self) {
        // SAFETY: the tiles' contents are no longer needed.
        unsafe { std::arch::asm!("tilerelease", options(nostack, nomem)) };
    }
}

/// Loads tiles 0-3 with the 32 x 32 f32 sums of a 2 x 2 register tile at `c`, rows `rs` f32
/// apart: tile 0 the top 16 rows' first 16 columns, 1 their last 16, 2 and 3 the bottom rows'.
/// With `rs` 0 every row is the first one (a bias per column).
///
/// # Safety
/// `c` points at 32 rows (1 with `rs` 0) of 32 f32; the tiles are configured on this thread.
#[inline]
pub(crate) unsafe fn load_sums(c: *const f32, rs: usize) {
    // SAFETY: the caller's contract.
    unsafe {
        std::arch::asm!(
            "tileloadd tmm0, [{c} + {s}]",
            "tileloadd tmm1, [{c} + {s} + 64]",
            "tileloadd tmm2, [{c2} + {s}]",
            "tileloadd tmm3, [{c2} + {s} + 64]",
            c = in(reg) c,
            c2 = in(reg) c.add(16 * rs),
            s = in(reg) rs * 4,
            options(nostack, readonly),
        );
    }
}

/// Stores tiles 0-3 as [`load_sums`] loads them.
///
/// # Safety
/// `c` points at 32 rows of 32 f32, `rs` apart; the tiles are configured on this thread.
#[inline]
pub(crate) unsafe fn store_sums(c: *mut f32, rs: usize) {
    // SAFETY: the caller's contract.
    unsafe {
        std::arch::asm!(
            "tilestored [{c} + {s}], tmm0",
            "tilestored [{c} + {s} + 64], tmm1",
            "tilestored [{c2} + {s}], tmm2",
            "tilestored [{c2} + {s} + 64], tmm3",
            c = in(reg) c,
            c2 = in(reg) c.add(16 * rs),
            s = in(reg) rs * 4,
            options(nostack),
        );
    }
}
