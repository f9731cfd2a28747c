//! The only source of randomness: the operating system's CSPRNG.

use ring::rand::{SecureRandom, SystemRandom};

use crate::Error;

pub(crate) fn fill(buf: &mut [u8]) -> Result<(), Error> {
    SystemRandom::new().fill(buf).map_err(|_| Error::Random)
}

pub(crate) fn array<const N: usize>() -> Result<[u8; N], Error> {
    let mut out = [0u8; N];
    fill(&mut out)?;
    Ok(out)
}
