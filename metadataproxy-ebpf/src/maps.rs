//! The maps the programs share with each other and with the daemon.
//!
//! Map sizes here are placeholders: the daemon sets the connection maps' sizes from its
//! configuration at load time. Every map is pinned by name in the daemon's pin directory, so a
//! restarted daemon's programs use the same ones as its predecessor's.

use aya_ebpf::bindings::{BPF_F_NO_PREALLOC, BPF_SK_STORAGE_GET_F_CREATE, bpf_map_type};
use aya_ebpf::macros::{btf_map, map};
use aya_ebpf::maps::{Array, HashMap, LruHashMap, PerCpuArray};
use metadataproxy_common::{Conn4, Conn6, DropSample, Record, Settings, SockMark, counters};

#[map]
pub static MP_SETTINGS: Array<Settings> = Array::pinned(1, 0);
#[map]
pub static MP_CONN4: LruHashMap<Conn4, Record> = LruHashMap::pinned(16_384, 0);
#[map]
pub static MP_CONN6: LruHashMap<Conn6, Record> = LruHashMap::pinned(16_384, 0);
#[map]
pub static MP_EXEMPT: HashMap<u64, u32> = HashMap::pinned(4_096, 0);
#[map]
pub static MP_COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(counters::COUNT, 0);
#[map]
pub static MP_LAST_DROP: Array<DropSample> = Array::pinned(1, 0);
#[btf_map]
pub static MP_SOCKS: SockStorage<SockMark> = SockStorage::new();

/// `LIBBPF_PIN_BY_NAME`: the loader pins the map under its name in its pin directory.
const PIN_BY_NAME: usize = 1;

/// A BTF-defined socket storage map (`BPF_MAP_TYPE_SK_STORAGE`) pinned by name.
///
/// aya-ebpf's own `SkStorage` can neither be pinned nor be used outside `cgroup/connect*`; the
/// layout is the one loaders read from BTF: every field a pointer whose pointee encodes the value.
#[repr(C)]
pub struct SockStorage<V> {
    r#type: *const [i32; bpf_map_type::BPF_MAP_TYPE_SK_STORAGE as usize],
    key: *const i32,
    value: *const V,
    max_entries: *const [i32; 0],
    map_flags: *const [i32; BPF_F_NO_PREALLOC as usize],
    pinning: *const [i32; PIN_BY_NAME],
}

// SAFETY: the fields are placeholders the loader reads from BTF; they are never dereferenced.
unsafe impl<V> Sync for SockStorage<V> {}

impl<V> SockStorage<V> {
    const fn new() -> Self {
        Self {
            r#type: core::ptr::null(),
            key: core::ptr::null(),
            value: core::ptr::null(),
            max_entries: core::ptr::null(),
            map_flags: core::ptr::null(),
            pinning: core::ptr::null(),
        }
    }

    fn as_ptr(&self) -> *mut core::ffi::c_void {
        core::ptr::from_ref(self).cast_mut().cast()
    }

    /// The value stored on socket `sk`, if any (a pointer into the map, valid for this run).
    ///
    /// # Safety
    /// `sk` must be a socket pointer the verifier accepts for `bpf_sk_storage_get` in the calling
    /// program (the context's `sk`, checked for null where the verifier wants it).
    pub unsafe fn get(&self, sk: *mut core::ffi::c_void) -> Option<*mut V> {
        // SAFETY: per the contract above; the returned pointer is null or a map value.
        let value = unsafe {
            aya_ebpf::helpers::bpf_sk_storage_get(self.as_ptr(), sk, core::ptr::null_mut(), 0)
        };
        (!value.is_null()).then(|| value.cast::<V>())
    }

    /// The value stored on socket `sk`, created (zeroed) if there is none.
    ///
    /// # Safety
    /// As [`SockStorage::get`].
    pub unsafe fn get_or_create(&self, sk: *mut core::ffi::c_void) -> Option<*mut V> {
        // SAFETY: per the contract above; the returned pointer is null or a map value.
        let value = unsafe {
            aya_ebpf::helpers::bpf_sk_storage_get(
                self.as_ptr(),
                sk,
                core::ptr::null_mut(),
                u64::from(BPF_SK_STORAGE_GET_F_CREATE),
            )
        };
        (!value.is_null()).then(|| value.cast::<V>())
    }
}

/// Adds one to counter `index` (a [`counters`] index) and remembers who caused it.
pub fn count(index: u32, cgroup_id: u64) {
    if let Some(n) = MP_COUNTERS.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot of this CPU, written only by this program run.
        unsafe { *n += 1 };
    }
    if let Some(last) = MP_LAST_DROP.get_ptr_mut(0) {
        // SAFETY: a map value; a concurrent writer could at worst tear this sample, which is only
        // ever used to name a culprit in a log line.
        unsafe {
            *last = DropSample {
                cgroup_id,
                at_ns: aya_ebpf::helpers::bpf_ktime_get_ns(),
                counter: index,
                pad: 0,
            };
        }
    }
}
