//! The key store's host client: boots the VM image (`keystore-host ARCH
//! IMAGE`), uses its keys from several clients, powers it off.
use std::{error::Error, time::Duration};

use ed25519_compact::{PublicKey, Signature};
use keystore_protocol::{KeyError, KeyStore, Request as Q, Response as A};
use svmc_host::{Arch, Attach, Session, SessionConfig, VmConfig};

type Result<T = ()> = std::result::Result<T, Box<dyn Error>>;
type Vm = Session<KeyStore>;
const USAGE: &str = "usage: keystore-host ARCH IMAGE";
const EXISTS: A = A::Err(KeyError::KeyExists);
const NO_KEY: A = A::Err(KeyError::NoSuchKey);

/// Asks `q` and checks that the answer is `want`.
fn check(s: &mut Vm, q: Q, want: A) -> Result {
    let got = s.call(&q)?;
    Ok((got == want)
        .then_some(())
        .ok_or_else(|| format!("{q:?}: {got:?}, not {want:?}"))?)
}

fn generate(s: &mut Vm, name: &str) -> Result<PublicKey> {
    let A::PublicKey(pk) = s.call(&Q::Generate(name.into()))? else {
        return Err("Generate: no public key".into());
    };
    Ok(PublicKey::from_slice(&pk)?)
}

/// Signs `msg` with `name` in the VM and checks the signature with `pk`.
fn sign(s: &mut Vm, name: &str, pk: &PublicKey, msg: &[u8]) -> Result {
    let A::Signature(sig) = s.call(&Q::Sign(name.into(), msg.to_vec()))? else {
        return Err("Sign: no signature".into());
    };
    Ok(pk.verify(msg, &Signature::from_slice(&sig)?)?)
}

fn main() -> Result {
    let mut args = std::env::args().skip(1);
    let arch: Arch = args.next().ok_or(USAGE)?.parse()?;
    let image = args.next().ok_or(USAGE)?;
    let launch = Attach::Launch(Box::new(VmConfig::new(arch, image)));
    let mut a = Vm::connect(&SessionConfig::new(launch))?;
    // The happy path, then the typed errors.
    let alice = generate(&mut a, "alice")?;
    sign(&mut a, "alice", &alice, b"hello")?;
    check(&mut a, Q::Generate("alice".into()), EXISTS)?;
    check(&mut a, Q::Sign("bob".into(), vec![1]), NO_KEY)?;
    // Several clients at once, on the VM's hybrid vsock socket.
    let uds = a.vm().ok_or("no VM")?.uds_path().to_path_buf();
    let (mut others, alice_pk) = (Vec::new(), A::PublicKey(alice.to_vec()));
    for i in 0..3 {
        let mut b = Vm::connect(&SessionConfig::hybrid(&uds))?;
        check(&mut b, Q::PublicKey("alice".into()), alice_pk.clone())?;
        let name = format!("client-{i}");
        let own = generate(&mut b, &name)?;
        sign(&mut b, &name, &own, b"from another client")?;
        sign(&mut a, &name, &own, b"and from the first")?;
        others.push(b);
    }
    others.into_iter().try_for_each(Vm::close)?;
    check(&mut a, Q::Delete("alice".into()), A::Deleted)?;
    check(&mut a, Q::PublicKey("alice".into()), NO_KEY)?;
    check(&mut a, Q::PowerOff, A::PoweringOff)?;
    match a.wait_exit(Duration::from_secs(10))? {
        Some(s) if s.success() => println!("keystore on {arch}: right answers, powered off"),
        other => return Err(format!("the VM did not power off cleanly: {other:?}").into()),
    }
    Ok(())
}
