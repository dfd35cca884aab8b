#include "data/shard.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "core/check.h"
#include "data/hash.h"

namespace resona::data {

TokenDType token_dtype_for_vocab(int64_t vocab_size) {
  RESONA_CHECK(vocab_size > 0 && vocab_size <= (int64_t{1} << 32))
      << "vocabulary size " << vocab_size << " does not fit a uint32 token id";
  return vocab_size <= 65536 ? TokenDType::kUint16 : TokenDType::kUint32;
}

const char* token_dtype_name(TokenDType t) {
  switch (t) {
    case TokenDType::kUint16:
      return "uint16";
    case TokenDType::kUint32:
      return "uint32";
  }
  RESONA_FAIL() << "unknown token dtype " << static_cast<uint32_t>(t);
  return "";
}

namespace {

uint64_t align8(uint64_t n) { return (n + 7) / 8 * 8; }

template <class T>
void put(unsigned char* p, size_t at, T v) {
  std::memcpy(p + at, &v, sizeof v);
}
template <class T>
T get(const unsigned char* p, size_t at) {
  T v;
  std::memcpy(&v, p + at, sizeof v);
  return v;
}

void write_all(int fd, const void* data, size_t n, const std::string& path) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    RESONA_CHECK(w > 0) << path << ": write failed: " << std::strerror(errno);
    p += w;
    n -= static_cast<size_t>(w);
  }
}

}  // namespace

ShardInfo write_shard(const std::string& path, const ShardMeta& meta,
                      const std::vector<int32_t>& tokens,
                      const std::vector<uint64_t>& doc_offsets) {
  RESONA_CHECK(!doc_offsets.empty() && doc_offsets.front() == 0 &&
               doc_offsets.back() == tokens.size())
      << path << ": document offsets must start at 0 and end at the token count " << tokens.size();
  for (size_t d = 0; d + 1 < doc_offsets.size(); ++d) {
    RESONA_CHECK(doc_offsets[d] <= doc_offsets[d + 1])
        << path << ": document offsets decrease at document " << d;
  }
  const uint64_t n = tokens.size(), docs = doc_offsets.size() - 1;
  const size_t bytes = static_cast<size_t>(meta.dtype);
  RESONA_CHECK(meta.dtype == TokenDType::kUint16 || meta.dtype == TokenDType::kUint32)
      << path << ": token dtype must be uint16 or uint32";
  RESONA_CHECK(meta.dtype == TokenDType::kUint32 || meta.vocab_size <= 65536)
      << path << ": vocabulary of " << meta.vocab_size << " does not fit uint16 ids";

  // Body: ids, padding, offsets.
  const uint64_t ids_bytes = align8(n * bytes);
  std::vector<unsigned char> body(ids_bytes + 8 * (docs + 1), 0);
  for (uint64_t i = 0; i < n; ++i) {
    const int32_t t = tokens[i];
    RESONA_CHECK(t >= 0 && static_cast<uint32_t>(t) < meta.vocab_size)
        << path << ": token id " << t << " at position " << i << " is outside [0, "
        << meta.vocab_size << ")";
    if (meta.dtype == TokenDType::kUint16) {
      put<uint16_t>(body.data(), i * 2, static_cast<uint16_t>(t));
    } else {
      put<uint32_t>(body.data(), i * 4, static_cast<uint32_t>(t));
    }
  }
  std::memcpy(body.data() + ids_bytes, doc_offsets.data(), 8 * (docs + 1));

  unsigned char header[kShardHeaderBytes] = {};
  std::memcpy(header, kShardMagic, 8);
  put<uint32_t>(header, 8, kShardVersion);
  put<uint32_t>(header, 12, static_cast<uint32_t>(meta.dtype));
  put<uint32_t>(header, 16, meta.vocab_size);
  put<int32_t>(header, 20, meta.eos_id);
  put<uint64_t>(header, 24, meta.tokenizer_hash);
  put<uint64_t>(header, 32, meta.source_hash);
  put<uint64_t>(header, 40, n);
  put<uint64_t>(header, 48, docs);
  const uint64_t checksum = hash64(body.data(), body.size(), hash64(header, 56));
  put<uint64_t>(header, 56, checksum);

  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  RESONA_CHECK(fd >= 0) << tmp << ": cannot create: " << std::strerror(errno);
  try {
    write_all(fd, header, sizeof header, tmp);
    write_all(fd, body.data(), body.size(), tmp);
    RESONA_CHECK(::fsync(fd) == 0) << tmp << ": fsync failed: " << std::strerror(errno);
  } catch (...) {
    ::close(fd);
    ::unlink(tmp.c_str());
    throw;
  }
  ::close(fd);
  RESONA_CHECK(::rename(tmp.c_str(), path.c_str()) == 0)
      << "renaming " << tmp << " to " << path << " failed: " << std::strerror(errno);

  ShardInfo info;
  info.meta = meta;
  info.num_tokens = n;
  info.num_docs = docs;
  info.checksum = checksum;
  info.file_bytes = sizeof header + body.size();
  return info;
}

std::unique_ptr<ShardReader> ShardReader::open(const std::string& path, bool verify) {
  std::unique_ptr<ShardReader> r(new ShardReader());
  r->path_ = path;
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  RESONA_CHECK(fd >= 0) << path << ": cannot open token shard: " << std::strerror(errno);
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    RESONA_FAIL() << path << ": cannot stat: " << std::strerror(errno);
  }
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  if (size < kShardHeaderBytes) {
    ::close(fd);
    RESONA_FAIL() << path << ": truncated token shard: " << size << " bytes, the header alone is "
                  << kShardHeaderBytes;
  }
  void* m = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
  ::close(fd);
  RESONA_CHECK(m != MAP_FAILED) << path << ": mmap failed: " << std::strerror(errno);
  r->map_ = static_cast<const unsigned char*>(m);
  r->map_bytes_ = size;
  const unsigned char* h = r->map_;

  RESONA_CHECK(std::memcmp(h, kShardMagic, 8) == 0)
      << path << ": not a token shard (bad magic; expected \"RSNSHARD\")";
  const uint32_t version = get<uint32_t>(h, 8);
  RESONA_CHECK(version == kShardVersion) << path << ": token shard format version " << version
                                         << ", this build reads " << kShardVersion;
  const uint32_t bytes = get<uint32_t>(h, 12);
  RESONA_CHECK(bytes == 2 || bytes == 4)
      << path << ": corrupted header: " << bytes << " bytes per token id (expected 2 or 4)";
  ShardInfo& info = r->info_;
  info.meta.dtype = static_cast<TokenDType>(bytes);
  info.meta.vocab_size = get<uint32_t>(h, 16);
  info.meta.eos_id = get<int32_t>(h, 20);
  info.meta.tokenizer_hash = get<uint64_t>(h, 24);
  info.meta.source_hash = get<uint64_t>(h, 32);
  info.num_tokens = get<uint64_t>(h, 40);
  info.num_docs = get<uint64_t>(h, 48);
  info.checksum = get<uint64_t>(h, 56);
  info.file_bytes = size;
  RESONA_CHECK(info.meta.vocab_size > 0 && (bytes == 4 || info.meta.vocab_size <= 65536))
      << path << ": corrupted header: vocabulary size " << info.meta.vocab_size << " with " << bytes
      << "-byte ids";

  // Sizes from the header, guarded against overflow by the file size first.
  RESONA_CHECK(info.num_tokens <= size / bytes && info.num_docs < size / 8)
      << path << ": truncated or corrupted token shard: the header claims " << info.num_tokens
      << " tokens and " << info.num_docs << " documents, the file has " << size << " bytes";
  const uint64_t ids_bytes = align8(info.num_tokens * bytes);
  const uint64_t expected = kShardHeaderBytes + ids_bytes + 8 * (info.num_docs + 1);
  RESONA_CHECK(size == expected) << path << ": " << (size < expected ? "truncated" : "corrupted")
                                 << " token shard: " << size << " bytes, expected " << expected
                                 << " for " << info.num_tokens << " tokens and " << info.num_docs
                                 << " documents";

  r->tokens_ = h + kShardHeaderBytes;
  r->offsets_ = reinterpret_cast<const uint64_t*>(h + kShardHeaderBytes + ids_bytes);

  if (verify) {
    const uint64_t sum = hash64(h + kShardHeaderBytes, size - kShardHeaderBytes, hash64(h, 56));
    RESONA_CHECK(sum == info.checksum)
        << path << ": corrupted token shard: checksum " << hex64(sum) << " does not match "
        << hex64(info.checksum) << " in the header";
  }
  // The document index, always (O(D)).
  RESONA_CHECK(r->offsets_[0] == 0 && r->offsets_[info.num_docs] == info.num_tokens)
      << path << ": corrupted document index: offsets run from " << r->offsets_[0] << " to "
      << r->offsets_[info.num_docs] << ", expected 0 to " << info.num_tokens;
  for (uint64_t d = 0; d < info.num_docs; ++d) {
    RESONA_CHECK(r->offsets_[d] <= r->offsets_[d + 1])
        << path << ": corrupted document index: offset of document " << d + 1 << " ("
        << r->offsets_[d + 1] << ") is below that of document " << d << " (" << r->offsets_[d]
        << ")";
  }
  if (verify) {
    const uint32_t v = info.meta.vocab_size;
    for (uint64_t i = 0; i < info.num_tokens; ++i) {
      const uint32_t t = bytes == 2 ? static_cast<const uint16_t*>(r->tokens_)[i]
                                    : static_cast<const uint32_t*>(r->tokens_)[i];
      RESONA_CHECK(t < v) << path << ": corrupted token shard: id " << t << " at position " << i
                          << " is not below the vocabulary size " << v;
    }
  }
  return r;
}

ShardReader::~ShardReader() {
  if (map_) ::munmap(const_cast<unsigned char*>(map_), map_bytes_);
}

int32_t ShardReader::token(uint64_t i) const {
  RESONA_CHECK(i < info_.num_tokens) << path_ << ": token " << i << " of " << info_.num_tokens;
  return info_.meta.dtype == TokenDType::kUint16
             ? static_cast<int32_t>(static_cast<const uint16_t*>(tokens_)[i])
             : static_cast<int32_t>(static_cast<const uint32_t*>(tokens_)[i]);
}

void ShardReader::copy_tokens(uint64_t begin, uint64_t count, int32_t* out) const {
  RESONA_DCHECK(begin + count <= info_.num_tokens);
  if (info_.meta.dtype == TokenDType::kUint16) {
    const uint16_t* p = static_cast<const uint16_t*>(tokens_) + begin;
    for (uint64_t i = 0; i < count; ++i) out[i] = p[i];
  } else {
    const uint32_t* p = static_cast<const uint32_t*>(tokens_) + begin;
    for (uint64_t i = 0; i < count; ++i) out[i] = static_cast<int32_t>(p[i]);
  }
}

std::vector<int32_t> ShardReader::doc_tokens(uint64_t d) const {
  RESONA_CHECK(d < info_.num_docs) << path_ << ": document " << d << " of " << info_.num_docs;
  std::vector<int32_t> out(doc_size(d));
  copy_tokens(doc_begin(d), out.size(), out.data());
  return out;
}

}  // namespace resona::data
