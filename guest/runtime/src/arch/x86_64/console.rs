//! The console: the 16550 UART at COM1 (I/O port 0x3f8).
//!
//! `uart_16550` programs it; writing goes through [`Fifo`], which fills
//! the transmit FIFO 16 bytes at a time instead of polling the line status
//! before every byte: each port access is an exit to the VMM, and the
//! boot's log lines cost about twice as many of them byte by byte.

use core::fmt::Write;

use spin::Mutex;
use uart_16550::SerialPort;
use x86_64::instructions::port::Port;

/// COM1's I/O base: the transmit holding register (THR) when written.
const COM1: u16 = 0x3f8;

/// Line status register (base + 5) and its THRE bit (5): with the FIFOs
/// on (as `SerialPort::init` sets them) the transmit FIFO is empty.
const LSR: u16 = COM1 + 5;
const LSR_THRE: u8 = 1 << 5;

/// Transmit FIFO depth of a 16550A. (QEMU's model drops the oldest byte
/// when more are written to a full FIFO, so never more than this.)
const TX_FIFO: usize = 16;

// SAFETY: COM1 is the standard 16550 UART port range on PC machines
// (QEMU's `-serial`); nothing else in the program touches these ports.
static SERIAL: Mutex<SerialPort> = Mutex::new(unsafe { SerialPort::new(COM1) });

/// Programs the UART (115200 8N1, FIFOs on, interrupts off).
pub fn init() {
    SERIAL.lock().init();
}

/// Runs `f` with the console locked.
pub fn with(f: impl FnOnce(&mut dyn Write)) {
    let mut serial = SERIAL.lock();
    f(&mut Fifo(&mut serial));
}

/// Writes to the UART whose lock it holds, a FIFO's worth at a time.
struct Fifo<'a>(#[allow(dead_code, reason = "holds the port's lock")] &'a mut SerialPort);

impl Write for Fifo<'_> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for chunk in s.as_bytes().chunks(TX_FIFO) {
            // SAFETY: reading COM1's line status has no side effect that
            // matters here (it clears error bits nobody reads).
            while unsafe { Port::<u8>::new(LSR).read() } & LSR_THRE == 0 {
                core::hint::spin_loop();
            }
            for &byte in chunk {
                // SAFETY: writing THR queues the byte; the FIFO has room
                // for the whole chunk since it was empty.
                unsafe { Port::<u8>::new(COM1).write(byte) };
            }
        }
        Ok(())
    }
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
        Fifo(&mut SERIAL.lock()).write_str(s)
    }
}
