#include "data/masks.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>
#include <sstream>

#include "core/check.h"
#include "data/hash.h"

namespace resona::data {

namespace {

template <class T>
void put(unsigned char* p, size_t at, T v) {
  std::memcpy(p + at, &v, sizeof v);  // little-endian hosts only (x86-64, aarch64)
}
template <class T>
T get(const unsigned char* p, size_t at) {
  T v;
  std::memcpy(&v, p + at, sizeof v);
  return v;
}

}  // namespace

bool MaskHeader::same_settings(const MaskHeader& o) const {
  return chunk == o.chunk && top_k == o.top_k && query_block == o.query_block &&
         seq_len == o.seq_len && encoder == o.encoder && encoder_dim == o.encoder_dim &&
         encoder_ngram == o.encoder_ngram && source_hash == o.source_hash;
}

std::string MaskHeader::describe() const {
  std::ostringstream s;
  s << "chunk " << chunk << ", top_k " << top_k << ", query_block " << query_block << ", seq_len "
    << seq_len << ", rows " << rows << ", encoder " << encoder << " (dim " << encoder_dim
    << ", ngram " << encoder_ngram << "), source hash " << std::hex << source_hash;
  return s.str();
}

void write_masks(const std::string& path, const MaskHeader& h, const std::vector<int32_t>& ids) {
  RESONA_CHECK(h.chunk >= 1 && h.top_k >= 1 && h.query_block >= 1 && h.seq_len >= 1)
      << path << ": invalid mask settings (" << h.describe() << ")";
  RESONA_CHECK(h.encoder.size() < 16) << path << ": encoder name '" << h.encoder << "' too long";
  RESONA_CHECK(static_cast<int64_t>(ids.size()) == int64_t{h.rows} * h.ids_per_row())
      << path << ": " << ids.size() << " ids for " << h.rows << " rows of " << h.ids_per_row();
  unsigned char head[kMaskHeaderBytes] = {};
  std::memcpy(head, kMaskMagic, 8);
  put<uint32_t>(head, 8, kMaskVersion);
  put<uint32_t>(head, 12, h.chunk);
  put<uint32_t>(head, 16, h.top_k);
  put<uint32_t>(head, 20, h.query_block);
  put<uint32_t>(head, 24, h.seq_len);
  put<uint32_t>(head, 28, h.rows);
  std::memcpy(head + 32, h.encoder.data(), h.encoder.size());
  put<uint32_t>(head, 48, h.encoder_dim);
  put<uint32_t>(head, 52, h.encoder_ngram);
  put<uint64_t>(head, 56, h.source_hash);
  put<uint64_t>(head, 64, hash64(ids.data(), ids.size() * sizeof(int32_t)));

  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  RESONA_CHECK(fd >= 0) << tmp << ": cannot create: " << std::strerror(errno);
  bool ok = true;
  for (auto [p, n] : {std::pair<const void*, size_t>{head, sizeof head},
                      {ids.data(), ids.size() * sizeof(int32_t)}}) {
    const char* c = static_cast<const char*>(p);
    while (ok && n > 0) {
      const ssize_t w = ::write(fd, c, n);
      if (w < 0 && errno == EINTR) continue;
      ok = w > 0;
      if (ok) c += w, n -= static_cast<size_t>(w);
    }
  }
  ok = ok && ::fsync(fd) == 0;
  const int err = errno;
  ::close(fd);
  if (!ok) ::unlink(tmp.c_str());
  RESONA_CHECK(ok) << tmp << ": write failed: " << std::strerror(err);
  RESONA_CHECK(::rename(tmp.c_str(), path.c_str()) == 0)
      << "renaming " << tmp << " to " << path << " failed: " << std::strerror(errno);
}

MaskFile read_masks(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  RESONA_CHECK(f.good()) << path << ": cannot open the mask file";
  std::string bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  RESONA_CHECK(bytes.size() >= kMaskHeaderBytes)
      << path << ": " << bytes.size() << " bytes, shorter than the " << kMaskHeaderBytes
      << "-byte header of a mask file";
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  RESONA_CHECK(std::memcmp(p, kMaskMagic, 8) == 0)
      << path << ": not a mask file (bad magic; expected RSNMASKS)";
  const uint32_t version = get<uint32_t>(p, 8);
  RESONA_CHECK(version == kMaskVersion)
      << path << ": mask format version " << version << ", this build reads " << kMaskVersion;
  MaskFile m;
  MaskHeader& h = m.header;
  h.chunk = get<uint32_t>(p, 12);
  h.top_k = get<uint32_t>(p, 16);
  h.query_block = get<uint32_t>(p, 20);
  h.seq_len = get<uint32_t>(p, 24);
  h.rows = get<uint32_t>(p, 28);
  h.encoder.assign(reinterpret_cast<const char*>(p + 32),
                   strnlen(reinterpret_cast<const char*>(p + 32), 16));
  h.encoder_dim = get<uint32_t>(p, 48);
  h.encoder_ngram = get<uint32_t>(p, 52);
  h.source_hash = get<uint64_t>(p, 56);
  RESONA_CHECK(h.chunk >= 1 && h.top_k >= 1 && h.query_block >= 1 && h.seq_len >= 1)
      << path << ": corrupt header (" << h.describe() << ")";
  const uint64_t want = kMaskHeaderBytes + uint64_t{h.rows} * h.ids_per_row() * sizeof(int32_t);
  RESONA_CHECK(bytes.size() == want)
      << path << ": " << bytes.size() << " bytes, but its header (" << h.describe() << ") needs "
      << want << " (truncated or corrupt)";
  m.ids.resize(static_cast<size_t>(h.rows) * h.ids_per_row());
  std::memcpy(m.ids.data(), p + kMaskHeaderBytes, m.ids.size() * sizeof(int32_t));
  RESONA_CHECK(hash64(m.ids.data(), m.ids.size() * sizeof(int32_t)) == get<uint64_t>(p, 64))
      << path << ": checksum mismatch (the ids are corrupt)";
  return m;
}

}  // namespace resona::data
