//! The C ABI (`include/electra.h`, generated from this module by cbindgen): the trainer, the
//! encoder and its tokenizer, and the fused operations on caller memory, for programs written in
//! other languages (C, C++, Python through `ctypes`).
//!
//! # Conventions
//! - Objects are opaque handles made by a `*_create`/`*_load` function and freed by the matching
//!   `*_destroy`; destroying NULL does nothing.
//! - Every function except [`electra_version`] and [`electra_last_error`] returns an
//!   [`ElectraStatus`]; results come back through pointer arguments, which are written only on
//!   success (a failed call never writes garbage into the caller's memory).
//! - After a failure, [`electra_last_error`] returns a message that names the argument and what
//!   was expected (shape, dtype, size, file). The message is per thread; a successful call clears
//!   it.
//! - Structs passed in or filled out begin with `struct_size`, which the caller sets to
//!   `sizeof(struct)`, so that later versions can add fields at the end and still serve a caller
//!   compiled against an older header ([`Versioned`]): its fields are read and written, the
//!   newer ones take their defaults; a size that is no version's is refused.
//! - No Rust panic crosses the boundary: an internal failure returns
//!   [`ElectraStatus::Internal`] with the panic's message.
//!
//! # Threading
//! A handle may be used from any thread, but by one thread at a time: calls on the same handle
//! must not overlap (the library does not lock). Different handles are independent and may be used
//! concurrently. The ops hold no state and may be called from any number of threads. The CPU
//! computations themselves run on the library's rayon thread pool. The device ops
//! ([`cuda_ops`]) follow the handle rule, and their calls through one handle must also be
//! ordered on the device (one stream, or streams ordered by the caller).

pub mod cuda_ops;
pub mod encoder;
pub mod ops;
pub mod trainer;

use std::cell::RefCell;
use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// The version of the C ABI that `include/electra.h` declares; it changes whenever a function's
/// signature or a struct's layout changes incompatibly. Compare with `ELECTRA_ABI_VERSION` from
/// the header a program was compiled against ([`electra_abi_version`] returns the library's).
pub const ELECTRA_ABI_VERSION: u32 = 2;

/// The outcome of a call. Anything but `Ok` leaves a message for [`electra_last_error`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElectraStatus {
    /// Success.
    Ok = 0,
    /// A required pointer or handle was NULL.
    NullPointer = 1,
    /// A value is out of range or inconsistent (a struct size, a count, a string that is not
    /// UTF-8, a token id outside the vocabulary).
    InvalidArgument = 2,
    /// A tensor has the wrong element type.
    Dtype = 3,
    /// A tensor's shape does not match what the others imply.
    Shape = 4,
    /// An output buffer is smaller than the result.
    BufferTooSmall = 5,
    /// The preset name is not one of tiny, small, base, large.
    UnknownPreset = 6,
    /// A JSON configuration does not parse or describes an impossible model or recipe.
    Config = 7,
    /// A file or directory could not be read or written, or is not in the expected format.
    Io = 8,
    /// The device is unknown or not available in this build (a build without CUDA), or a CUDA
    /// call failed.
    Device = 9,
    /// A training step failed: a non-finite loss (the step was not taken) or no memory.
    Training = 10,
    /// A bug in the library (a caught panic); the handle involved should be destroyed.
    Internal = 11,
}

/// A failure on its way to the caller: its code and its message.
#[derive(Debug)]
pub(crate) struct Failure {
    status: ElectraStatus,
    message: String,
}

/// What the functions of this module return before [`guard`] turns it into a status.
pub(crate) type CResult<T> = Result<T, Failure>;

/// A failure with `status` and `message`.
pub(crate) fn fail(status: ElectraStatus, message: impl Into<String>) -> Failure {
    Failure {
        status,
        message: message.into(),
    }
}

thread_local! {
    /// The message of the last failed call on this thread; empty after a success.
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(message: &str) {
    // An interior NUL would cut the C string short; show it instead.
    let text = CString::new(message.replace('\0', "\\0")).expect("NULs were replaced");
    LAST_ERROR.with(|e| *e.borrow_mut() = text);
}

/// Runs the body of an entry point: its error becomes a status and the thread's last error, and a
/// panic is caught (it must not unwind into C) and reported as [`ElectraStatus::Internal`].
pub(crate) fn guard(body: impl FnOnce() -> CResult<()>) -> ElectraStatus {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => {
            set_last_error("");
            ElectraStatus::Ok
        }
        Ok(Err(f)) => {
            set_last_error(&f.message);
            f.status
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            set_last_error(&format!(
                "internal error in electra (please report it; destroy the handle involved): {what}"
            ));
            ElectraStatus::Internal
        }
    }
}

/// The argument `name` as a string: it must be non-NULL, NUL-terminated UTF-8.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string that outlives the call.
pub(crate) unsafe fn c_str<'a>(p: *const c_char, name: &str) -> CResult<&'a str> {
    if p.is_null() {
        return Err(fail(ElectraStatus::NullPointer, format!("{name} is NULL")));
    }
    CStr::from_ptr(p).to_str().map_err(|e| {
        fail(
            ElectraStatus::InvalidArgument,
            format!("{name} is not UTF-8: {e}"),
        )
    })
}

/// Like [`c_str`], but NULL is allowed and gives `None`.
///
/// # Safety
/// As for [`c_str`].
pub(crate) unsafe fn opt_c_str<'a>(p: *const c_char, name: &str) -> CResult<Option<&'a str>> {
    if p.is_null() {
        Ok(None)
    } else {
        c_str(p, name).map(Some)
    }
}

/// The object behind a handle or an in-pointer; NULL is an error naming `name`.
///
/// # Safety
/// `p` is NULL or points to a live `T` that nothing else uses during the call.
pub(crate) unsafe fn deref_mut<'a, T>(p: *mut T, name: &str) -> CResult<&'a mut T> {
    p.as_mut()
        .ok_or_else(|| fail(ElectraStatus::NullPointer, format!("{name} is NULL")))
}

/// `len` values at `p`; NULL is an error unless `len` is 0.
///
/// # Safety
/// `p` is NULL or points to `len` initialised values that outlive the call.
pub(crate) unsafe fn slice<'a, T>(p: *const T, len: usize, name: &str) -> CResult<&'a [T]> {
    if len == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(fail(ElectraStatus::NullPointer, format!("{name} is NULL")));
    }
    Ok(std::slice::from_raw_parts(p, len))
}

/// `len` writable values at `p`; NULL is an error unless `len` is 0.
///
/// # Safety
/// `p` is NULL or points to `len` values that nothing else uses during the call.
pub(crate) unsafe fn slice_mut<'a, T>(p: *mut T, len: usize, name: &str) -> CResult<&'a mut [T]> {
    if len == 0 {
        return Ok(&mut []);
    }
    if p.is_null() {
        return Err(fail(ElectraStatus::NullPointer, format!("{name} is NULL")));
    }
    Ok(std::slice::from_raw_parts_mut(p, len))
}

/// A struct that carries its size (`struct_size`, its first field), so that later versions can
/// add fields at its end and still serve callers compiled against an older header.
pub(crate) trait Versioned: Copy {
    /// `sizeof` the struct in each version of the header, oldest first; the last is this
    /// library's. A caller's `struct_size` must be one of them.
    const SIZES: &'static [usize];
    /// The values of the fields a caller's older struct lacks.
    fn defaults() -> Self;
}

/// Checks the `struct_size` a caller set in a struct of type `T` named `name`: the size of one
/// of its versions (older ones are served: see [`read_versioned`], [`write_versioned`]).
pub(crate) fn check_struct_size<T: Versioned>(struct_size: usize, name: &str) -> CResult<()> {
    let current = std::mem::size_of::<T>();
    debug_assert_eq!(T::SIZES.last(), Some(&current));
    if !T::SIZES.contains(&struct_size) {
        let which = if struct_size < T::SIZES[0] {
            format!("smaller than its first version's {}", T::SIZES[0])
        } else if struct_size > current {
            format!("larger than this library's {current} (a newer header than the library)")
        } else {
            format!("not the size of any version ({:?})", T::SIZES)
        };
        return Err(fail(
            ElectraStatus::InvalidArgument,
            format!(
                "{name}.struct_size is {struct_size}, {which}; expected {current} (sizeof the \
                 struct in this library's electra.h; set it with sizeof)"
            ),
        ));
    }
    Ok(())
}

/// The struct `name` a caller passed in: its `struct_size` checked, the bytes it holds copied,
/// and the fields past them (added by versions newer than the caller's header) at their
/// defaults.
///
/// # Safety
/// `p` is NULL or points to a `T` of at least `struct_size` readable bytes.
pub(crate) unsafe fn read_versioned<T: Versioned>(p: *const T, name: &str) -> CResult<T> {
    if p.is_null() {
        return Err(fail(ElectraStatus::NullPointer, format!("{name} is NULL")));
    }
    // `struct_size` is the first field of every versioned struct, in every version.
    let size = std::ptr::read_unaligned(p as *const usize);
    check_struct_size::<T>(size, name)?;
    let mut value = T::defaults();
    std::ptr::copy_nonoverlapping(p as *const u8, &mut value as *mut T as *mut u8, size);
    Ok(value)
}

/// Writes `value` into the caller's struct at `p`, only the first `struct_size` bytes (which the
/// caller set, and [`check_struct_size`] checked), so an older caller's smaller struct is not
/// overrun; `struct_size` itself keeps the caller's value.
///
/// # Safety
/// `p` points to a `T` of at least `struct_size` writable bytes, `struct_size` checked.
pub(crate) unsafe fn write_versioned<T: Versioned>(p: *mut T, value: &T, struct_size: usize) {
    let keep = std::mem::size_of::<usize>();
    let src = (value as *const T as *const u8).add(keep);
    std::ptr::copy_nonoverlapping(src, (p as *mut u8).add(keep), struct_size - keep);
}

/// Checks that the caller's buffer `name` of `given` values can hold `needed`.
pub(crate) fn check_room(name: &str, given: usize, needed: usize, what: &str) -> CResult<()> {
    if given < needed {
        return Err(fail(
            ElectraStatus::BufferTooSmall,
            format!("{name} holds {given} values but {what} needs {needed}"),
        ));
    }
    Ok(())
}

/// Boxes `value` and hands its pointer to the caller through `out`, which must not be NULL.
///
/// # Safety
/// `out` is NULL or points to writable memory for one pointer.
pub(crate) unsafe fn hand_out<T>(out: *mut *mut T, value: T) {
    // Checked by every caller before the work, so that a NULL `out` costs nothing.
    debug_assert!(!out.is_null());
    *out = Box::into_raw(Box::new(value));
}

/// Frees a handle made by [`hand_out`]; NULL is ignored.
///
/// # Safety
/// `p` is NULL or a pointer from [`hand_out`] not freed before.
pub(crate) unsafe fn free<T>(p: *mut T) {
    if !p.is_null() {
        drop(Box::from_raw(p));
    }
}

/// Checks an out-pointer for a handle before any work is done.
pub(crate) fn check_out<T>(out: *mut *mut T, name: &str) -> CResult<()> {
    if out.is_null() {
        return Err(fail(ElectraStatus::NullPointer, format!("{name} is NULL")));
    }
    Ok(())
}

static VERSION: &CStr =
    match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
        Ok(v) => v,
        Err(_) => panic!("the crate version has no NUL"),
    };

/// The library's version, e.g. `"0.1.0"`: a static string, never freed.
#[no_mangle]
pub extern "C" fn electra_version() -> *const c_char {
    VERSION.as_ptr()
}

/// The ABI version the library implements; a program should check it equals the
/// `ELECTRA_ABI_VERSION` it was compiled with.
#[no_mangle]
pub extern "C" fn electra_abi_version() -> u32 {
    ELECTRA_ABI_VERSION
}

/// The message of the last failed call on this thread (empty when the last call succeeded). The
/// string belongs to the library and stays valid until the next call on this thread.
#[no_mangle]
pub extern "C" fn electra_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

#[cfg(test)]
mod tests {
    use super::ops::{ELECTRA_DTYPE_BF16, ELECTRA_DTYPE_F32, ELECTRA_DTYPE_U32};
    use super::{read_versioned, write_versioned, ElectraStatus, Versioned, ELECTRA_ABI_VERSION};

    /// A struct in its second version, which added `added` to the first's `old`.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq)]
    struct Grown {
        struct_size: usize,
        old: u32,
        added: u64,
    }

    /// The first version, as a caller compiled against the older header has it.
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct GrownV1 {
        struct_size: usize,
        old: u32,
    }

    impl Versioned for Grown {
        const SIZES: &'static [usize] =
            &[std::mem::size_of::<GrownV1>(), std::mem::size_of::<Grown>()];
        fn defaults() -> Self {
            Grown {
                struct_size: std::mem::size_of::<Grown>(),
                old: 1,
                added: 77,
            }
        }
    }

    #[test]
    fn an_older_callers_struct_is_read_with_defaults_and_written_within_its_size() {
        let v1 = GrownV1 {
            struct_size: std::mem::size_of::<GrownV1>(),
            old: 5,
        };
        // SAFETY: `v1` holds its struct_size bytes.
        let read = unsafe { read_versioned(&v1 as *const GrownV1 as *const Grown, "g") }.unwrap();
        assert_eq!((read.old, read.added), (5, 77));
        // Written back: only the caller's bytes. A canary after them must survive.
        #[repr(C)]
        struct WithCanary {
            v1: GrownV1,
            canary: [u8; 16],
        }
        let mut out = WithCanary {
            v1,
            canary: [0xAB; 16],
        };
        let value = Grown {
            struct_size: 999,
            old: 9,
            added: 1 << 40,
        };
        // SAFETY: `out.v1` holds its struct_size bytes, checked above.
        unsafe {
            write_versioned(
                &mut out.v1 as *mut GrownV1 as *mut Grown,
                &value,
                v1.struct_size,
            )
        };
        assert_eq!(out.v1.old, 9);
        assert_eq!(out.v1.struct_size, std::mem::size_of::<GrownV1>());
        assert!(
            out.canary.iter().all(|&b| b == 0xAB),
            "wrote past the caller's struct"
        );
    }

    #[test]
    fn a_size_below_the_first_version_or_between_versions_is_refused() {
        for (size, text) in [
            (8, "smaller than its first version's 16"),
            (20, "not the size of any version"),
            (64, "larger than this library's 24"),
        ] {
            let g = Grown {
                struct_size: size,
                old: 0,
                added: 0,
            };
            // SAFETY: `g` holds the current size, at least what each case claims to read.
            let err = unsafe { read_versioned(&g, "g") }.unwrap_err();
            assert_eq!(err.status, ElectraStatus::InvalidArgument);
            assert!(err.message.contains(text), "{}", err.message);
        }
    }

    #[test]
    fn the_header_defines_the_abi_constants_of_the_library() {
        let header = include_str!("../../include/electra.h");
        for (name, value) in [
            ("ELECTRA_ABI_VERSION", ELECTRA_ABI_VERSION),
            ("ELECTRA_DTYPE_F32", ELECTRA_DTYPE_F32),
            ("ELECTRA_DTYPE_U32", ELECTRA_DTYPE_U32),
            ("ELECTRA_DTYPE_BF16", ELECTRA_DTYPE_BF16),
        ] {
            let define = format!("#define {name} {value}\n");
            assert!(
                header.contains(&define),
                "include/electra.h lacks `{define}`"
            );
        }
        // Only the ABI's own names: none of the crate's other constants leaks into C.
        for line in header.lines().filter(|l| l.starts_with("#define ")) {
            assert!(line.starts_with("#define ELECTRA_"), "{line}");
        }
    }
}
