//! The console: the 16550 UART at COM1 (I/O port 0x3f8).

use core::fmt::Write;

use spin::Mutex;
use uart_16550::SerialPort;

/// COM1's I/O base.
const COM1: u16 = 0x3f8;

// SAFETY: COM1 is the standard 16550 UART port range on PC machines
// (QEMU's `-serial`); nothing else in the program touches these ports.
static SERIAL: Mutex<SerialPort> = Mutex::new(unsafe { SerialPort::new(COM1) });

/// Programs the UART (115200 8N1, FIFOs on, interrupts off).
pub fn init() {
    SERIAL.lock().init();
}

/// Runs `f` with the console locked.
pub fn with(f: impl FnOnce(&mut dyn Write)) {
    f(&mut *SERIAL.lock());
}

/// The console for the panic handler: taken even if the panicking code held
/// the lock (one CPU, no interrupts: the holder is the panicking code).
pub fn panic_writer() -> impl Write {
    if SERIAL.is_locked() {
        // SAFETY: single CPU and no interrupts: the only holder of the lock
        // is the code that panicked, which will never run again.
        unsafe { SERIAL.force_unlock() };
    }
    PanicWriter
}

struct PanicWriter;

impl Write for PanicWriter {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        SERIAL.lock().write_str(s)
    }
}
