// NumPy .npy files of integers: the interchange format for token and label arrays, so that
// data made by other tools (e.g. Zoology's MQAR generator) can be trained on here and
// ours read there.
//
// The format (numpy/lib/format.py, versions 1.0, 2.0 and 3.0):
//
//   "\x93NUMPY" major minor   6 + 2 bytes
//   header length             uint16 LE (1.0) or uint32 LE (2.0, 3.0)
//   header                    a Python dict literal, latin-1 (1.0, 2.0) or UTF-8 (3.0):
//                             {'descr': '<i4', 'fortran_order': False, 'shape': (2, 3), }
//                             padded with spaces and ended by '\n' so that the data starts
//                             at a multiple of 64 bytes
//   data                      prod(shape) elements, C order (last index fastest)
//
// Read: '<i4', '<i8', '<u2' and '<u4', C order, any rank (rank 0 holds one element),
// into int64.
// Anything else is refused with a message naming the file and the problem: a bad magic
// or version, a header that does not parse or lacks/adds keys, Fortran order, big-endian,
// floating-point, structured or object dtypes, data shorter or longer than the shape says.
//
// Written: '<i8' (or '<i4'), C order, with the header numpy.save itself writes (the same
// bytes for the same array), version 1.0, or 2.0 when the header exceeds 65535 bytes.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace resona::data {

struct NpyArray {
  std::vector<int64_t> shape;
  std::vector<int64_t> values;  // prod(shape) elements, row-major
  int64_t numel() const;
};

// Parses a whole .npy file held in memory; `what` names the source in errors.
NpyArray parse_npy(const std::string& bytes, const std::string& what);
NpyArray read_npy(const std::string& path);

// The bytes of a .npy file of `values` with `shape` ('<i8' if int64, else '<i4', in which
// case every value must fit in int32).
std::string serialize_npy(const std::vector<int64_t>& shape, const std::vector<int64_t>& values,
                          bool int64 = true, const std::string& what = "npy");
// Writes PATH.tmp.<pid>, fsyncs it and renames it over `path`: readers see the old file
// or the whole new one.
void write_npy(const std::string& path, const std::vector<int64_t>& shape,
               const std::vector<int64_t>& values, bool int64 = true);

}  // namespace resona::data
