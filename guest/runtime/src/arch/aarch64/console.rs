//! The console: the PL011 UART the device tree names (0x0900_0000 on
//! `virt`), through the `arm-pl011-uart` crate.
//!
//! Writing goes through [`Fifo`], which fills the transmit FIFO 16 bytes at
//! a time (once the FIFO is empty) instead of reading the flags before
//! every byte as the crate's `write_str` does: each register access is an
//! exit to the VMM, and the boot's log lines cost about twice as many of
//! them byte by byte.

use core::fmt::Write;
use core::ptr::NonNull;

use arm_pl011_uart::{DataBits, LineConfig, Parity, StopBits, Uart};
use safe_mmio::UniqueMmioPointer;
use spin::Mutex;

/// Transmit FIFO depth of the PL011 (16 entries in r1p4, 32 in r1p5;
/// `Uart::enable` turns the FIFOs on).
const TX_FIFO: usize = 16;

/// The UART's reference clock on `virt` (the `apb-pclk` fixed clock).
const UART_CLOCK_HZ: u32 = 24_000_000;

static SERIAL: Mutex<Option<Uart<'static>>> = Mutex::new(None);

/// The UART at the address the device tree gave (or `virt`'s).
fn uart() -> Uart<'static> {
    let base = super::platform().map_or(crate::parse::fdt::DEFAULT_UART, |p| p.uart);
    let regs = NonNull::new(base as *mut _).expect("PL011 at address 0");
    // SAFETY: `base` is the PL011's register block (device tree), mapped
    // as device memory by the identity map; only SERIAL's one `Uart`
    // accesses it (the panic path replaces it rather than sharing it).
    Uart::new(unsafe { UniqueMmioPointer::new(regs) })
}

/// Programs the UART: 115200 8N1 (QEMU ignores the rate).
pub fn init() {
    let mut uart = uart();
    let config = LineConfig {
        data_bits: DataBits::Bits8,
        parity: Parity::None,
        stop_bits: StopBits::One,
    };
    // Fails only for an impossible divisor; the UART then stays as QEMU
    // reset it, which works.
    let _ = uart.enable(config, 115_200, UART_CLOCK_HZ);
    *SERIAL.lock() = Some(uart);
}

/// Runs `f` with the console locked. Does nothing before [`init`].
pub fn with(f: impl FnOnce(&mut dyn Write)) {
    if let Some(uart) = SERIAL.lock().as_mut() {
        f(&mut Fifo(uart));
    }
}

/// Writes to a UART a FIFO's worth at a time.
struct Fifo<'a, 'u>(&'a mut Uart<'u>);

impl Write for Fifo<'_, '_> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for chunk in s.as_bytes().chunks(TX_FIFO) {
            while !self.0.is_tx_fifo_empty() {
                core::hint::spin_loop();
            }
            for &byte in chunk {
                self.0.write_word(byte);
            }
        }
        Ok(())
    }
}

/// The console for the panic handler and the exception handler: taken even
/// if the failing code held the lock (one CPU, no interrupts: the holder is
/// the failing code), and usable before [`init`].
pub fn panic_writer() -> impl Write {
    if SERIAL.is_locked() {
        // SAFETY: single CPU and no interrupts: the only holder of the lock
        // is the code that failed, which will never run again.
        unsafe { SERIAL.force_unlock() };
    }
    let mut serial = SERIAL.lock();
    if serial.is_none() {
        *serial = Some(uart());
    }
    PanicWriter
}

struct PanicWriter;

impl Write for PanicWriter {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        SERIAL
            .lock()
            .as_mut()
            .map_or(Ok(()), |u| Fifo(u).write_str(s))
    }
}
