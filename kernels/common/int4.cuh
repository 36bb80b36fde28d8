// int4.cuh: INT4 codes in memory and in mma registers.
//
// `mma.m16n8k64 .s4` takes eight signed nibbles per 32-bit register, element i in bits 4i..4i+3
// (the lowest k index in the lowest nibble), just as `.s8` takes four bytes with element i in
// byte i. So a packed INT4 row is a byte string where byte j holds channel 2j in its low nibble
// and channel 2j+1 in its high nibble, and the fragment loaders of attn_mma.cu treat INT8 and
// INT4 rows alike as arrays of 32-bit words (ABI.md, "Q/K code rows").
#ifndef SAGE_INT4_CUH
#define SAGE_INT4_CUH

#ifndef SAGE_AMALGAMATED
#include "common/prelude.cuh"
#endif

// Two codes in [-7, 7] to one byte: `even` (channel 2j) low nibble, `odd` (channel 2j+1) high nibble.
SAGE_DEVICE u8 pack_int4_pair(int even, int odd) { return (u8)((even & 0xf) | ((odd & 0xf) << 4)); }

// The host-side inverse, for reference: code = ((int)(byte << (4 * (1 - half))) as i8) >> 4,
// i.e. sign-extend the nibble. Device code never unpacks: the tensor core does.
SAGE_DEVICE int unpack_int4(u8 byte, int half) { return ((int)(i8)(u8)(byte << (4 * (1 - half)))) >> 4; }

#endif  // SAGE_INT4_CUH
