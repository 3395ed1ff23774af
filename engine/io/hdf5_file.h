// A small RAII wrapper over the HDF5 C API: files, groups, N-D numeric datasets, attributes.
// Every failure throws llm::Error naming the file and the object; HDF5's own error printing is off.
// Used by the data pipeline (token shards) and by checkpoints.
#pragma once
#include <cstdint>
#include <functional>
#include <ostream>
#include <string>
#include <vector>

namespace llm::io {

// Element types a dataset can hold. Reads convert between numeric types (HDF5 does it), so a
// uint16 dataset can be read into int32 memory.
enum class H5Type { F32, F64, I32, I64, U8, U16, U32 };
const char* h5type_name(H5Type t);

template <typename T> struct h5type_of;
template <> struct h5type_of<float> { static constexpr H5Type value = H5Type::F32; };
template <> struct h5type_of<double> { static constexpr H5Type value = H5Type::F64; };
template <> struct h5type_of<int32_t> { static constexpr H5Type value = H5Type::I32; };
template <> struct h5type_of<int64_t> { static constexpr H5Type value = H5Type::I64; };
template <> struct h5type_of<uint8_t> { static constexpr H5Type value = H5Type::U8; };
template <> struct h5type_of<uint16_t> { static constexpr H5Type value = H5Type::U16; };
template <> struct h5type_of<uint32_t> { static constexpr H5Type value = H5Type::U32; };

class H5File {
 public:
  enum class Mode { Read, ReadWrite, Create /* truncates */ };

  H5File() = default;
  H5File(const std::string& path, Mode mode);
  ~H5File();
  H5File(H5File&& other) noexcept;
  H5File& operator=(H5File&& other) noexcept;
  H5File(const H5File&) = delete;
  H5File& operator=(const H5File&) = delete;

  // Creates `path` as a temporary sibling file; commit() closes it, fsyncs and renames it over
  // `path`, so a reader never sees a half-written file. Without commit() the temporary is removed.
  static H5File create_atomic(const std::string& path);
  void commit();

  bool is_open() const { return file_ >= 0; }
  const std::string& path() const { return path_; }
  void close();

  // Objects are named by paths such as "model/layer0/weight"; "/" is the root group.
  void create_group(const std::string& name);  // creates missing parents too
  bool exists(const std::string& name) const;
  // Names (not paths) of the members of a group, sorted.
  std::vector<std::string> list(const std::string& group = "/") const;
  std::vector<std::string> list_datasets(const std::string& group = "/") const;

  // Writes a contiguous dataset of the given shape (parents are created). Fails if it exists.
  void write_raw(const std::string& name, H5Type type, const void* data, const std::vector<int64_t>& shape);
  template <typename T>
  void write(const std::string& name, const T* data, const std::vector<int64_t>& shape) {
    write_raw(name, h5type_of<T>::value, data, shape);
  }
  template <typename T>
  void write(const std::string& name, const std::vector<T>& data) {
    write_raw(name, h5type_of<T>::value, data.data(), {static_cast<int64_t>(data.size())});
  }

  std::vector<int64_t> shape(const std::string& name) const;
  H5Type dtype(const std::string& name) const;  // throws for types outside H5Type
  // Reads the whole dataset, converted to `type`; `out` must hold numel elements.
  void read_raw(const std::string& name, H5Type type, void* out, size_t out_count) const;
  // Reads elements [offset, offset + count) of a 1-D dataset.
  void read_range_raw(const std::string& name, H5Type type, int64_t offset, int64_t count, void* out) const;
  template <typename T>
  std::vector<T> read(const std::string& name) const {
    int64_t n = 1;
    for (int64_t d : shape(name)) n *= d;
    std::vector<T> v(static_cast<size_t>(n));
    read_raw(name, h5type_of<T>::value, v.data(), v.size());
    return v;
  }
  template <typename T>
  std::vector<T> read_range(const std::string& name, int64_t offset, int64_t count) const {
    std::vector<T> v(static_cast<size_t>(count));
    read_range_raw(name, h5type_of<T>::value, offset, count, v.data());
    return v;
  }

  // Attributes on any object (file root "/", group or dataset); set_* replaces an existing one.
  void set_attr(const std::string& object, const std::string& key, const std::string& value);
  void set_attr(const std::string& object, const std::string& key, const char* value) {
    set_attr(object, key, std::string(value));
  }
  void set_attr(const std::string& object, const std::string& key, int64_t value);
  void set_attr(const std::string& object, const std::string& key, double value);
  bool has_attr(const std::string& object, const std::string& key) const;
  std::string attr_string(const std::string& object, const std::string& key) const;
  int64_t attr_int(const std::string& object, const std::string& key) const;
  double attr_double(const std::string& object, const std::string& key) const;

 private:
  std::string where(const std::string& name) const;  // "file.h5: name"
  int64_t file_ = -1;       // hid_t
  std::string path_;        // the path the user named
  std::string temp_path_;   // non-empty while an atomic create is pending
};

// True when the file starts with the HDF5 signature.
bool is_hdf5_file(const std::string& path);

// Writes `data` to `path` atomically (temporary sibling, fsync, rename). For small text files.
void write_file_atomic(const std::string& path, const std::string& data);
// The same for larger files: `write` streams the content into the temporary file.
void write_file_atomic(const std::string& path, const std::function<void(std::ostream&)>& write);

}  // namespace llm::io
