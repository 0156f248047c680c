//! Shamir secret sharing over GF(2^8), byte by byte, in Vault's share layout.
//!
//! Written by hand: the Rust crates for this are either unmaintained, use
//! log/exp tables indexed by secret bytes (a cache-timing channel), or do not
//! produce Vault's layout. The arithmetic here is branch-free and table-free
//! so that the time taken does not depend on secret bytes.
//!
//! Field: GF(2^8) modulo the AES polynomial x^8 + x^4 + x^3 + x + 1 (0x11B),
//! the field Vault uses.
//!
//! Share layout (Vault's): the y-values, one per secret byte, followed by one
//! trailing byte holding the x-coordinate (1..=255). A share of a 32-byte
//! secret is therefore 33 bytes. With a single share (`shares == 1`) there
//! is no polynomial: the "share" is the secret itself, without x byte, as in
//! Vault's one-key initialisation.

use thiserror::Error;
use zeroize::Zeroizing;

#[derive(Debug, Clone, Copy, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ShamirError {
    #[error("secret must not be empty")]
    EmptySecret,
    #[error("the number of shares must be between 1 and 255")]
    InvalidShares,
    #[error("threshold must be at least 2 (1 only with a single share) and at most the number of shares")]
    InvalidThreshold,
    #[error("no shares given")]
    NoShares,
    #[error("shares must all have the same length")]
    LengthMismatch,
    #[error("share is too short")]
    ShareTooShort,
    #[error("share has an invalid x-coordinate")]
    InvalidCoordinate,
    #[error("duplicate share detected")]
    DuplicateShare,
    #[error("random number generator failed")]
    Random,
}

/// Multiplication in GF(2^8) (Russian-peasant). Each step selects with masks
/// instead of branching on bits of `a` or `b`.
#[inline]
pub(crate) fn gf_mul(a: u8, b: u8) -> u8 {
    let mut a = a;
    let mut b = b;
    let mut r = 0u8;
    for _ in 0..8 {
        r ^= a & 0u8.wrapping_sub(b & 1);
        let carry = 0u8.wrapping_sub(a >> 7);
        a = (a << 1) ^ (0x1b & carry);
        b >>= 1;
    }
    r
}

/// Multiplicative inverse as a^254 (a^255 = 1 for a ≠ 0); the exponent is a
/// constant, so the square-and-multiply sequence is fixed. Maps 0 to 0.
pub(crate) fn gf_inv(a: u8) -> u8 {
    // 254 = 0b1111_1110: a^2 · a^4 · ... · a^128.
    let mut sq = gf_mul(a, a); // a^2
    let mut r = sq;
    for _ in 0..6 {
        sq = gf_mul(sq, sq); // a^4 .. a^128
        r = gf_mul(r, sq);
    }
    r
}

/// Fills `buf` from the system CSPRNG (AWS-LC).
fn random(buf: &mut [u8]) -> Result<(), ShamirError> {
    aws_lc_rs::rand::fill(buf).map_err(|_| ShamirError::Random)
}

/// `n` distinct x-coordinates drawn from 1..=255 (a partial Fisher–Yates
/// shuffle with rejection sampling, so every choice is unbiased).
fn random_coordinates(n: usize) -> Result<Vec<u8>, ShamirError> {
    let mut pool: Vec<u8> = (1..=255u8).collect();
    let mut byte = [0u8; 1];
    for i in 0..n {
        // Candidates left are pool[i..]; `limit` is the largest multiple
        // of their count that fits in a byte's 256 values.
        let range = 255 - i;
        let limit = 256 - (256 % range);
        let j = loop {
            random(&mut byte)?;
            let v = usize::from(byte[0]);
            if v < limit {
                break i + v % range;
            }
        };
        pool.swap(i, j);
    }
    pool.truncate(n);
    Ok(pool)
}

/// Splits `secret` into `shares` shares, any `threshold` of which recover it.
///
/// `shares == 1` requires `threshold == 1` and returns the secret itself;
/// otherwise `2 <= threshold <= shares <= 255`.
pub fn split(
    secret: &[u8],
    shares: u8,
    threshold: u8,
) -> Result<Vec<Zeroizing<Vec<u8>>>, ShamirError> {
    if secret.is_empty() {
        return Err(ShamirError::EmptySecret);
    }
    if shares == 0 {
        return Err(ShamirError::InvalidShares);
    }
    if threshold > shares || threshold == 0 || (shares > 1 && threshold < 2) {
        return Err(ShamirError::InvalidThreshold);
    }
    if shares == 1 {
        return Ok(vec![Zeroizing::new(secret.to_vec())]);
    }

    let n = usize::from(shares);
    let degree = usize::from(threshold) - 1;
    let xs = random_coordinates(n)?;

    // coefficients[j * degree + k] is the coefficient of x^(k+1) of the
    // polynomial of secret byte j; its constant term is the byte itself.
    // Uniformly random (zero included) so any `threshold - 1` shares are
    // independent of the secret.
    let mut coefficients = Zeroizing::new(vec![0u8; secret.len() * degree]);
    random(&mut coefficients)?;

    let mut out = Vec::with_capacity(n);
    for &x in &xs {
        let mut share = Zeroizing::new(Vec::with_capacity(secret.len() + 1));
        for (j, &s) in secret.iter().enumerate() {
            let poly = &coefficients[j * degree..(j + 1) * degree];
            // Horner from the highest coefficient down to the constant term.
            let mut y = 0u8;
            for &c in poly.iter().rev() {
                y = gf_mul(y, x) ^ c;
            }
            y = gf_mul(y, x) ^ s;
            share.push(y);
        }
        share.push(x);
        out.push(share);
    }
    Ok(out)
}

/// Recovers the secret from shares produced by [`split`].
///
/// A single share is taken as the one-share case of [`split`] and returned
/// as is. With two or more, the shares must have the same length (at least
/// two bytes) and distinct non-zero x-coordinates. Too few shares, or shares
/// of different splits, yield a wrong secret rather than an error: only the
/// caller can tell (the barrier does, by failing to decrypt the keyring).
pub fn combine(shares: &[impl AsRef<[u8]>]) -> Result<Zeroizing<Vec<u8>>, ShamirError> {
    let Some(first) = shares.first() else {
        return Err(ShamirError::NoShares);
    };
    let len = first.as_ref().len();
    if shares.len() == 1 {
        if len == 0 {
            return Err(ShamirError::ShareTooShort);
        }
        return Ok(Zeroizing::new(first.as_ref().to_vec()));
    }
    if len < 2 {
        return Err(ShamirError::ShareTooShort);
    }
    if shares.len() > 255 {
        return Err(ShamirError::InvalidShares);
    }
    let mut seen = [false; 256];
    let mut xs = Vec::with_capacity(shares.len());
    for s in shares {
        let s = s.as_ref();
        if s.len() != len {
            return Err(ShamirError::LengthMismatch);
        }
        // x-coordinates are public (they travel in clear in the share), so
        // checking them with ordinary branches leaks nothing.
        let x = s[len - 1];
        if x == 0 {
            return Err(ShamirError::InvalidCoordinate);
        }
        if seen[usize::from(x)] {
            return Err(ShamirError::DuplicateShare);
        }
        seen[usize::from(x)] = true;
        xs.push(x);
    }

    // Lagrange basis at 0: l_i = Π_{j≠i} x_j / (x_j - x_i), subtraction
    // being XOR in characteristic 2.
    let basis: Vec<u8> = xs
        .iter()
        .enumerate()
        .map(|(i, &xi)| {
            let mut num = 1u8;
            let mut den = 1u8;
            for (j, &xj) in xs.iter().enumerate() {
                if i != j {
                    num = gf_mul(num, xj);
                    den = gf_mul(den, xj ^ xi);
                }
            }
            gf_mul(num, gf_inv(den))
        })
        .collect();

    let mut secret = Zeroizing::new(vec![0u8; len - 1]);
    for (share, &l) in shares.iter().zip(&basis) {
        for (out, &y) in secret.iter_mut().zip(share.as_ref()) {
            *out ^= gf_mul(y, l);
        }
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Textbook carry-less multiply then reduction, with branches: the
    /// obviously-correct reference the constant-time version is checked
    /// against.
    fn slow_mul(a: u8, b: u8) -> u8 {
        let mut p: u16 = 0;
        for i in 0..8 {
            if b & (1 << i) != 0 {
                p ^= u16::from(a) << i;
            }
        }
        for i in (8..16).rev() {
            if p & (1 << i) != 0 {
                p ^= 0x11b << (i - 8);
            }
        }
        p as u8
    }

    #[test]
    fn mul_matches_reference_for_all_pairs() {
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                assert_eq!(gf_mul(a, b), slow_mul(a, b), "{a} * {b}");
            }
        }
    }

    #[test]
    fn known_products() {
        // FIPS-197 §4.2: {57} • {83} = {c1}, {57} • {13} = {fe}.
        assert_eq!(gf_mul(0x57, 0x83), 0xc1);
        assert_eq!(gf_mul(0x57, 0x13), 0xfe);
    }

    #[test]
    fn inverse_for_all_nonzero() {
        assert_eq!(gf_inv(0), 0);
        for a in 1..=255u8 {
            let inv = gf_inv(a);
            assert_eq!(slow_mul(a, inv), 1, "inverse of {a}");
        }
    }

    #[test]
    fn vault_layout() {
        let secret = [7u8; 32];
        let shares = split(&secret, 5, 3).unwrap();
        assert_eq!(shares.len(), 5);
        let mut xs: Vec<u8> = shares.iter().map(|s| s[32]).collect();
        assert!(shares.iter().all(|s| s.len() == 33));
        xs.sort_unstable();
        xs.dedup();
        assert_eq!(xs.len(), 5);
        assert!(xs.iter().all(|&x| x != 0));
    }

    #[test]
    fn single_share_is_the_secret() {
        let secret = b"0123456789abcdef0123456789abcdef";
        let shares = split(secret, 1, 1).unwrap();
        assert_eq!(shares.len(), 1);
        assert_eq!(shares[0].as_slice(), secret);
        assert_eq!(combine(&shares).unwrap().as_slice(), secret);
    }

    #[test]
    fn parameters_rejected() {
        let s = [1u8; 4];
        assert_eq!(split(&[], 3, 2), Err(ShamirError::EmptySecret));
        assert_eq!(split(&s, 0, 0), Err(ShamirError::InvalidShares));
        assert_eq!(split(&s, 3, 4), Err(ShamirError::InvalidThreshold));
        assert_eq!(split(&s, 3, 1), Err(ShamirError::InvalidThreshold));
        assert_eq!(split(&s, 3, 0), Err(ShamirError::InvalidThreshold));
        assert_eq!(split(&s, 1, 0), Err(ShamirError::InvalidThreshold));
        assert!(split(&s, 255, 255).is_ok());
        assert!(split(&s, 255, 2).is_ok());
    }

    #[test]
    fn malformed_shares_rejected() {
        let none: [&[u8]; 0] = [];
        assert_eq!(combine(&none), Err(ShamirError::NoShares));
        let shares = split(&[9u8; 16], 3, 2).unwrap();
        assert_eq!(
            combine(&[shares[0].as_slice(), &shares[1][1..]]),
            Err(ShamirError::LengthMismatch)
        );
        assert_eq!(
            combine(&[shares[0].as_slice(), shares[0].as_slice()]),
            Err(ShamirError::DuplicateShare)
        );
        let mut zero_x = shares[1].to_vec();
        zero_x[16] = 0;
        assert_eq!(
            combine(&[shares[0].to_vec(), zero_x]),
            Err(ShamirError::InvalidCoordinate)
        );
        assert_eq!(combine(&[[1u8], [2u8]]), Err(ShamirError::ShareTooShort));
    }

    /// Picks `k` distinct indices of `0..n` from a seed.
    fn subset(n: usize, k: usize, seed: u64) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..n).collect();
        let mut s = seed | 1;
        for i in 0..k {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let j = i + (s as usize) % (n - i);
            idx.swap(i, j);
        }
        idx.truncate(k);
        idx
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn any_threshold_subset_recovers(
            secret in proptest::collection::vec(any::<u8>(), 16..48),
            shares in 2u8..=10,
            t_seed in any::<u8>(),
            seed in any::<u64>(),
        ) {
            let threshold = 2 + t_seed % (shares - 1);
            let parts = split(&secret, shares, threshold).unwrap();
            prop_assert_eq!(parts.len(), usize::from(shares));

            // `threshold` shares, in random order, recover the secret;
            // more than `threshold` do too.
            for k in [usize::from(threshold), usize::from(shares)] {
                let pick: Vec<&[u8]> = subset(parts.len(), k, seed)
                    .into_iter()
                    .map(|i| parts[i].as_slice())
                    .collect();
                let got = combine(&pick).unwrap();
                prop_assert_eq!(got.as_slice(), secret.as_slice());
            }

            // One share fewer yields something else (2^-128 or less chance
            // of a coincidence with 16+ bytes).
            let pick: Vec<&[u8]> = subset(parts.len(), usize::from(threshold) - 1, seed)
                .into_iter()
                .map(|i| parts[i].as_slice())
                .collect();
            let got = combine(&pick).unwrap();
            prop_assert_ne!(got.as_slice(), secret.as_slice());
        }

        #[test]
        fn exhaustive_subsets_small(secret in proptest::collection::vec(any::<u8>(), 16..24)) {
            // Every subset of 5 shares with threshold 3.
            let parts = split(&secret, 5, 3).unwrap();
            for mask in 1u32..32 {
                let pick: Vec<&[u8]> = (0..5)
                    .filter(|i| mask & (1 << i) != 0)
                    .map(|i| parts[i].as_slice())
                    .collect();
                let got = combine(&pick).unwrap();
                if pick.len() >= 3 {
                    prop_assert_eq!(got.as_slice(), secret.as_slice());
                } else {
                    prop_assert_ne!(got.as_slice(), secret.as_slice());
                }
            }
        }
    }
}
