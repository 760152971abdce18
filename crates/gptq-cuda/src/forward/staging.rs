//! Calibration states kept in host memory when they do not fit on the
//! device (`--max-gpu-memory`), and their trips through it.
//!
//! The states sit in page-locked host memory (`cuMemHostAlloc`), so a copy
//! runs at the bus's speed and truly asynchronously, on a copy stream of its
//! own. Each lane has two device buffers: while the compute stream runs
//! chunk `i` in one, the copy stream brings chunk `i + 1` (and then
//! `i + 2`) into the other and, when a pass changes the states, takes chunk
//! `i − 1` back to the host. Events order the two streams; the host only
//! touches the states before the first block and after a synchronization.
//!
//! Where pinning fails (a locked-memory limit), or with
//! `GPTQ_CUDA_PINNED=0` (for comparison), the states are ordinary host
//! memory and every copy runs on the compute stream, one chunk after
//! another, as a plain synchronous loop would.

use super::*;
use cudarc::driver::{result, CudaEvent, CudaStream};
use std::ops::{Deref, DerefMut};

/// One lane's states over all calibration tokens, `[tokens, hidden]` f32.
pub(super) enum HostStates {
    /// Page-locked memory from `cuMemHostAlloc` (freed on drop).
    Pinned {
        ptr: *mut f32,
        len: usize,
        ctx: Arc<cudarc::driver::CudaContext>,
    },
    Pageable(Vec<f32>),
}

// The pinned pointer is owned memory like a `Vec`'s.
unsafe impl Send for HostStates {}
unsafe impl Sync for HostStates {}

impl HostStates {
    /// A copy of `v`, page-locked when `pinned` and the driver allows it.
    pub(super) fn from_slice(dev: &Cuda, v: &[f32], pinned: bool) -> Self {
        if pinned && !v.is_empty() {
            match Self::pinned(dev, v.len()) {
                Ok(mut s) => {
                    s.copy_from_slice(v);
                    return s;
                }
                Err(e) => tracing::warn!(
                    "could not page-lock {:.1} GiB of host memory for the calibration states \
                     ({e}); using ordinary memory (slower copies, not overlapped)",
                    (v.len() * 4) as f64 / (1u64 << 30) as f64
                ),
            }
        }
        HostStates::Pageable(v.to_vec())
    }

    fn pinned(dev: &Cuda, len: usize) -> Result<Self> {
        dev.ctx.bind_to_thread().ctx("binding the context")?;
        // Flags 0: cached host memory (the host reads it back in tests and
        // the evaluation head), not write-combined.
        let ptr = unsafe { result::malloc_host(len * 4, 0) }.ctx("cuMemHostAlloc")?;
        Ok(HostStates::Pinned {
            ptr: ptr.cast(),
            len,
            ctx: dev.ctx.clone(),
        })
    }

    pub(super) fn is_pinned(&self) -> bool {
        matches!(self, HostStates::Pinned { .. })
    }
}

impl Deref for HostStates {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        match self {
            // Valid for `len` f32 while `self` lives; the copies that write
            // it are synchronized before the host reads (module docs).
            HostStates::Pinned { ptr, len, .. } => unsafe {
                std::slice::from_raw_parts(*ptr, *len)
            },
            HostStates::Pageable(v) => v,
        }
    }
}

impl DerefMut for HostStates {
    fn deref_mut(&mut self) -> &mut [f32] {
        match self {
            HostStates::Pinned { ptr, len, .. } => unsafe {
                std::slice::from_raw_parts_mut(*ptr, *len)
            },
            HostStates::Pageable(v) => v,
        }
    }
}

impl Drop for HostStates {
    fn drop(&mut self) {
        if let HostStates::Pinned { ptr, ctx, .. } = self {
            // No copy may still be writing it (a pass cut short by an
            // error leaves some queued); if the context cannot tell, leak
            // rather than free memory the device may still write.
            if ctx.bind_to_thread().is_ok() && ctx.synchronize().is_ok() {
                let _ = unsafe { result::free_host(ptr.cast()) };
            }
        }
    }
}

/// The stream the chunk copies run on: a second stream when the states
/// are pinned (overlapped with compute), else the compute stream itself.
pub(super) fn copy_stream(dev: &Cuda, pinned: bool) -> Result<Arc<CudaStream>> {
    if pinned {
        dev.ctx.new_stream().ctx("creating a copy stream")
    } else {
        Ok(dev.stream.clone())
    }
}

/// Whether to page-lock host states (`GPTQ_CUDA_PINNED=0` turns it off).
pub(super) fn want_pinned() -> bool {
    std::env::var("GPTQ_CUDA_PINNED").map_or(true, |v| v != "0")
}

fn event(s: &CudaStream) -> Result<CudaEvent> {
    s.record_event(None).ctx("recording an event")
}

impl GpuCalibration {
    /// Runs `pass` once per chunk of host states, each chunk's sequences on
    /// the device (in the lanes' `x`); with `keep`, the states each pass
    /// leaves go back to the host. Uploads run ahead on the copy stream
    /// into the lanes' second buffers (see the module docs).
    pub(super) fn over_chunks(
        &mut self,
        keep: bool,
        mut pass: impl FnMut(&mut Self) -> Result<()>,
    ) -> Result<()> {
        let n = self
            .chunk_count()
            .ok_or_else(|| Error::Shape("the states are on the device".into()))?;
        let cs = self.copy.clone();
        // The buffers may still be read by earlier compute.
        cs.wait(&event(&self.dev.stream)?)
            .ctx("ordering the copy stream")?;
        let mut ready = Vec::with_capacity(n);
        for ci in 0..n.min(2) {
            self.copy_chunk(ci, ci == 1, true)?;
            ready.push(event(&cs)?);
        }
        for ci in 0..n {
            self.dev
                .stream
                .wait(&ready[ci])
                .ctx("waiting for a chunk's states")?;
            self.select_chunk(ci);
            pass(self)?;
            cs.wait(&event(&self.dev.stream)?)
                .ctx("ordering the copy stream")?;
            if ci + 1 < n {
                for lane in &mut self.lanes {
                    if let Some(alt) = lane.x_alt.as_mut() {
                        std::mem::swap(&mut lane.x, alt);
                    }
                }
            }
            // Chunk `ci` now sits in the lanes' second buffers (or, for the
            // last chunk, still in `x`).
            let last = ci + 1 == n;
            if keep {
                self.copy_chunk(ci, !last, false)?;
            }
            if ci + 2 < n {
                self.copy_chunk(ci + 2, true, true)?;
                ready.push(event(&cs)?);
            }
        }
        self.dev
            .stream
            .wait(&event(&cs)?)
            .ctx("waiting for the copies")?;
        self.done = 0;
        Ok(())
    }

    /// Sets the sequences of chunk `ci` as the ones on the device.
    fn select_chunk(&mut self, ci: usize) {
        let r = match &self.chunks {
            Some(c) => c[ci].clone(),
            None => return,
        };
        self.lens = self.all_lens[r].to_vec();
        self.offs = offsets(&self.lens);
        self.tokens = self.lens.iter().sum();
        self.done = 0;
    }

    /// Queues on the copy stream the copy of chunk `ci`'s states between
    /// the host and each lane's `x` (or second buffer with `alt`): to the
    /// device with `up`, back to the host otherwise.
    fn copy_chunk(&mut self, ci: usize, alt: bool, up: bool) -> Result<()> {
        let r = match &self.chunks {
            Some(c) => c[ci].clone(),
            None => return Err(Error::Shape("the states are on the device".into())),
        };
        let h = self.hidden;
        let from = self.all_offs[r.start] * h;
        let n = self.all_lens[r].iter().sum::<usize>() * h;
        let cs = self.copy.cu_stream();
        for (lane, host) in self.lanes.iter().zip(self.host_x.iter_mut()) {
            let buf = match (alt, &lane.x_alt) {
                (false, _) => &lane.x,
                (true, Some(b)) => b,
                (true, None) => return Err(Error::Shape("no second state buffer".into())),
            };
            if buf.len() < n || host.len() < from + n {
                return Err(Error::Shape(format!(
                    "chunk {ci} of {n} values does not fit its buffers"
                )));
            }
            let dst = dptr(buf, &self.dev.stream);
            // Both ranges checked above; the copy stream is ordered against
            // the compute stream by events (`over_chunks`).
            unsafe {
                if up {
                    result::memcpy_htod_async(dst, &host[from..from + n], cs)
                } else {
                    result::memcpy_dtoh_async(&mut host[from..from + n], dst, cs)
                }
            }
            .ctx(if up {
                "copying states to the device"
            } else {
                "copying states to the host"
            })?;
        }
        Ok(())
    }
}
