//! The binary's allocator: mimalloc rather than glibc's malloc. In the ingest bench glibc
//! spent about a quarter of the node's time in malloc and in zeroing pages it had given back
//! and faulted in again, and the node took ~110k msg/s; with mimalloc, ~240k.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Option numbers of the bundled mimalloc (v3's `mi_option_e` in mimalloc.h; a test checks
/// that they land on the options of these names).
const MI_ARENA_EAGER_COMMIT: i32 = 4;
const MI_PURGE_DELAY: i32 = 15;

/// Free memory goes back to the system at once and arenas are committed as they are used:
/// mimalloc's defaults (a 10 ms purge delay, arenas committed up front) put the node's peak
/// RSS in the ingest bench at ~150-180 MiB, these at ~119 MiB, at the same rate. Run from
/// `.init_array`, before the first Rust allocation makes mimalloc's first arena (set in
/// `main`, the arena setting came too late).
extern "C" fn tune_allocator() {
    // SAFETY: setting an option is a store into mimalloc's option table.
    unsafe {
        libmimalloc_sys::mi_option_set(MI_ARENA_EAGER_COMMIT, 0);
        libmimalloc_sys::mi_option_set(MI_PURGE_DELAY, 0);
    }
}

#[used]
#[unsafe(link_section = ".init_array")]
static TUNE_ALLOCATOR: extern "C" fn() = tune_allocator;

#[cfg(test)]
mod tests {
    #[test]
    fn the_allocator_is_tuned_before_main_and_the_option_numbers_name_the_options_meant() {
        use std::ffi::{CStr, c_char, c_void};
        unsafe extern "C" {
            fn mi_options_print_out(out: libmimalloc_sys::mi_output_fun, arg: *mut c_void);
        }
        unsafe extern "C" fn collect(msg: *const c_char, arg: *mut c_void) {
            // SAFETY: `arg` is the String below; mimalloc passes a C string.
            let text = unsafe { &mut *(arg as *mut String) };
            text.push_str(&unsafe { CStr::from_ptr(msg) }.to_string_lossy());
        }
        let mut text = String::new();
        // SAFETY: the callback only appends to `text`, which outlives the call.
        unsafe { mi_options_print_out(Some(collect), &mut text as *mut String as *mut c_void) };
        assert!(text.contains("option 'arena_eager_commit': 0"), "{text}");
        assert!(text.contains("option 'purge_delay': 0"), "{text}");
    }
}
