//! FP8 E4M3 ("e4m3fn", OCP): 1 sign, 4 exponent bits (bias 7), 3 mantissa bits, no infinities,
//! 0x7F/0xFF are NaN, largest finite 448, subnormals m/8 * 2^-6.

/// Largest finite E4M3 value; also the factor P is scaled by before encoding (ALGORITHM.md Step 6).
pub const E4M3_MAX: f32 = 448.0;

/// A channel's FP8 V scale (ALGORITHM.md Step 7): `amax / 448`, and 1 where that is zero. "1 if
/// zero" is read as applying to the scale: besides `amax == 0` it covers an f32 `amax` below ~3e-43,
/// whose quotient underflows to 0 (dividing V by 0 would code its values as NaN or +-448). With 1
/// the channel's codes are 0, off by less than its `amax`.
pub fn fp8_v_scale(amax: f32) -> f32 {
    let s = amax / E4M3_MAX;
    if s == 0.0 { 1.0 } else { s }
}

/// The code of +448 (0x7E); with the sign bit, -448 is 0xFE.
const CODE_MAX: u8 = 0x7E;
/// The canonical NaN (0x7F; 0xFF is the negative one).
const CODE_NAN: u8 = 0x7F;
const SIGN: u8 = 0x80;

/// Decodes one code. Computed from the bits with integer arithmetic so the table is a constant.
const fn decode_const(code: u8) -> f32 {
    let sign = if code & SIGN != 0 { -1.0f32 } else { 1.0f32 };
    let exp = ((code >> 3) & 0x0F) as i32;
    let mant = (code & 0x07) as i32;
    if exp == 0x0F && mant == 0x07 {
        return f32::NAN;
    }
    if exp == 0 {
        // subnormal: m/8 * 2^-6 = m * 2^-9
        return sign * (mant as f32) * (1.0 / 512.0);
    }
    // (8 + m) * 2^(exp - 7 - 3), built as an f32 bit pattern: exact for every code.
    let bits = (((exp - 7 + 127) as u32) << 23) | ((mant as u32) << 20);
    sign * f32::from_bits(bits)
}

const fn build_table() -> [f32; 256] {
    let mut table = [0.0f32; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = decode_const(i as u8);
        i += 1;
    }
    table
}

/// Every code's value: the FP8 decode of the PV stage is a table look-up on the CPU.
pub static E4M3_TABLE: [f32; 256] = build_table();

/// Decodes an E4M3 code to f32 (exact).
#[inline]
pub fn e4m3_decode(code: u8) -> f32 {
    E4M3_TABLE[code as usize]
}

/// Encodes f32 to E4M3: round to nearest, ties to even; beyond 448 (infinities included)
/// saturates to ±448; NaN gives NaN.
#[inline]
pub fn e4m3_encode(x: f32) -> u8 {
    let sign = if x.is_sign_negative() { SIGN } else { 0 };
    if x.is_nan() {
        return sign | CODE_NAN;
    }
    let a = x.abs();
    // 464 is the midpoint between 448 and the next (non-existent) step 480; from there up the
    // rounded value would overflow, below it rounding lands on 448 at most.
    if a >= 464.0 {
        return sign | CODE_MAX;
    }
    // Below the smallest normal (2^-6) the step is 2^-9: scale to units of the step and round.
    if a < 1.0 / 64.0 {
        let m = (a * 512.0).round_ties_even() as u8; // 0..=8; 8 is the smallest normal's code
        return sign | m;
    }
    // Normal: a = 2^e * (1 + f); the exponent comes from the f32 bits (a is normal in f32 too).
    let e = ((a.to_bits() >> 23) as i32) - 127; // -6..=8
    // a * 2^(3-e) is in [8, 16) and exact (power-of-two scaling); round it to 3 mantissa bits.
    let scaled = a * f32::from_bits(((127 + 3 - e) as u32) << 23);
    let m = scaled.round_ties_even() as i32; // 8..=16
    let (e, m) = if m == 16 { (e + 1, 8) } else { (e, m) };
    let code = (((e + 7) as u32) << 3) | ((m - 8) as u32);
    if code > CODE_MAX as u32 {
        return sign | CODE_MAX;
    }
    sign | code as u8
}

/// Rounds f32 to the nearest E4M3 value (encode then decode).
#[inline]
pub fn e4m3_round(x: f32) -> f32 {
    e4m3_decode(e4m3_encode(x))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_nan_code(c: u8) -> bool {
        c & 0x7F == 0x7F
    }

    #[test]
    fn all_256_codes_decode_to_their_defined_values() {
        for c in 0..=255u8 {
            let v = e4m3_decode(c);
            if is_nan_code(c) {
                assert!(v.is_nan(), "code {c:#04x}");
                continue;
            }
            let sign = if c & 0x80 != 0 { -1.0f64 } else { 1.0 };
            let e = ((c >> 3) & 0xF) as i32;
            let m = (c & 7) as f64;
            let want = if e == 0 {
                sign * m / 8.0 * 2f64.powi(-6)
            } else {
                sign * (1.0 + m / 8.0) * 2f64.powi(e - 7)
            };
            assert_eq!(v as f64, want, "code {c:#04x}");
        }
        assert_eq!(e4m3_decode(0x7E), 448.0);
        assert_eq!(e4m3_decode(0x01), 2f32.powi(-9));
        assert_eq!(e4m3_decode(0x08), 2f32.powi(-6));
    }

    #[test]
    fn every_code_round_trips() {
        for c in 0..=255u8 {
            if is_nan_code(c) {
                continue;
            }
            let back = e4m3_encode(e4m3_decode(c));
            // -0 and +0 keep their sign bits
            assert_eq!(back, c, "code {c:#04x}");
        }
    }

    #[test]
    fn ties_round_to_even_and_neighbours_to_nearest() {
        // Walk every pair of neighbouring positive finite codes: the midpoint goes to the even code,
        // points just off it to the nearer one.
        for c in 0..0x7Eu8 {
            let lo = e4m3_decode(c);
            let hi = e4m3_decode(c + 1);
            let mid = (lo as f64 + hi as f64) / 2.0;
            let mid32 = mid as f32;
            assert_eq!(mid32 as f64, mid, "midpoints are exact in f32");
            let even = if c % 2 == 0 { c } else { c + 1 };
            assert_eq!(
                e4m3_encode(mid32),
                even,
                "tie between {c:#04x} and {:#04x}",
                c + 1
            );
            assert_eq!(e4m3_encode(-mid32), even | 0x80);
            let below = f32::from_bits(mid32.to_bits() - 1);
            let above = f32::from_bits(mid32.to_bits() + 1);
            assert_eq!(e4m3_encode(below), c);
            assert_eq!(e4m3_encode(above), c + 1);
        }
    }

    #[test]
    fn saturation_and_nan() {
        for x in [
            448.0f32,
            449.0,
            463.99,
            464.0,
            480.0,
            1e6,
            f32::MAX,
            f32::INFINITY,
        ] {
            assert_eq!(e4m3_encode(x), 0x7E, "{x}");
            assert_eq!(e4m3_encode(-x), 0xFE, "{x}");
        }
        assert_eq!(e4m3_encode(416.0), 0x7D);
        assert_eq!(e4m3_encode(431.0), 0x7D);
        assert_eq!(
            e4m3_encode(432.0),
            0x7E,
            "the tie 416|448 goes to the even 0x7E"
        );
        assert!(is_nan_code(e4m3_encode(f32::NAN)));
        assert!(e4m3_decode(e4m3_encode(f32::NAN)).is_nan());
        // Below half the smallest subnormal everything is zero; the half itself ties to zero.
        assert_eq!(e4m3_encode(2f32.powi(-10)), 0x00);
        assert_eq!(e4m3_encode(2f32.powi(-10) * 1.0001), 0x01);
        assert_eq!(e4m3_encode(1e-30), 0x00);
        assert_eq!(e4m3_encode(-0.0), 0x80);
    }

    #[test]
    fn encode_is_nearest_on_a_dense_sweep() {
        // Every f32 in [2^-12, 500) stepping 1/7 of an ulp bucket: the chosen code is a nearest one.
        let finite: Vec<f32> = (0..0x7Fu8).map(e4m3_decode).collect();
        let mut x = 2f32.powi(-12);
        while x < 500.0 {
            let got = e4m3_decode(e4m3_encode(x));
            let best = finite
                .iter()
                .map(|&v| (v - x).abs())
                .fold(f32::INFINITY, f32::min);
            assert!((got - x).abs() <= best || x > 448.0, "x={x} got={got}");
            x *= 1.0 + 1.0 / 61.0;
        }
    }
}
