//! The link between the runtime and the application's main: [`crate::entry!`] defines the
//! symbol the boot code calls, under a fixed export name.

/// Declares the VM's main function: `vm_runtime::entry!(main);` where `main` is
/// `fn(&StartInfo<'static>) -> !` or `fn(&StartInfo<'static>)`; in the second case the VM powers
/// off (PSCI SYSTEM_OFF) when it returns. `main` runs on vCPU 0 with the heap, console, logging
/// and IRQs ready.
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        // The export name is what `arch::boot::call_app_main` links against; no other symbol
        // of the image may have it (the link fails if two do).
        #[unsafe(export_name = "__sluice_vm_main")]
        #[allow(unreachable_code)]
        fn __sluice_vm_main(info: &'static $crate::StartInfo<'static>) -> ! {
            $main(info);
            $crate::psci::system_off()
        }
    };
}
