//! The runtime's room for code the compiler cannot check: everything below touches the machine
//! or memory outside Rust's model, and nothing outside this module and [`crate::shared`] may
//! (the crate denies `unsafe_code`; only these two modules allow it). It owns the boot stub
//! and per-vCPU set-up (`boot`), the EL1 exception vectors (`vectors`), the hypercall
//! instruction (`hvc`), the heap's hand-over of raw RAM (`heap`, at boot and for the
//! balloon), the link to the application's main (`entry`), the emulated NIC's register
//! accesses (`mmio`), the deliberate stray accesses of the isolation tests (`probe`), and
//! the VMs' `memcpy` (`memcpy`: aligned loads only, for QEMU's sake).
//! System registers and the GIC CPU interface are not here: `aarch64-cpu` and
//! `arm-gic` give safe typed access to them (see `crate::cpu`, `crate::gic`).

pub(crate) mod boot;
mod entry;
pub mod heap;
pub(crate) mod hvc;
pub(crate) mod memcpy;
pub mod mmio;
pub mod probe;
mod vectors;
