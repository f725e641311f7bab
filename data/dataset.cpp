// Dataset index parsing with errors that name the file, line and value.
#include "vidgrad/data/dataset.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "vidgrad/core/error.h"
#include "vidgrad/core/file_io.h"

namespace vidgrad::data {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

json parse_json_file(const std::string& path) {
  const std::string text = read_file(path);
  try {
    return json::parse(text);
  } catch (const json::exception& e) {
    VG_THROW("dataset: '" << path << "' is not valid JSON: " << e.what());
  }
}

// The first existing candidate, or an error listing them all.
std::string find_file(const std::vector<fs::path>& candidates, const std::string& what) {
  std::string tried;
  for (const auto& c : candidates) {
    if (fs::is_regular_file(c)) return c.string();
    tried += (tried.empty() ? "" : ", ") + c.string();
  }
  VG_THROW("dataset: cannot find the " << what << "; looked for " << tried);
}

std::string find_dir(const std::vector<fs::path>& candidates) {
  for (const auto& c : candidates)
    if (fs::is_directory(c)) return c.string();
  return candidates.back().string();
}

std::string trim(const std::string& s) {
  const auto b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(" \t\r\n") - b + 1);
}

}  // namespace

std::string strip_template(const std::string& text) {
  std::string out;
  for (char c : text)
    if (c != '[' && c != ']') out += c;
  return out;
}

std::vector<std::int64_t> mirror_labels(const std::vector<std::string>& names) {
  std::map<std::string, std::int64_t> index;
  for (std::size_t i = 0; i < names.size(); ++i) index[names[i]] = static_cast<std::int64_t>(i);
  std::vector<std::int64_t> flip(names.size());
  for (std::size_t i = 0; i < names.size(); ++i) {
    std::istringstream words(names[i]);
    std::string w, mirrored;
    while (words >> w) {
      if (w == "left") w = "right";
      else if (w == "right") w = "left";
      mirrored += (mirrored.empty() ? "" : " ") + w;
    }
    auto it = index.find(mirrored);
    flip[i] = it != index.end() ? it->second : static_cast<std::int64_t>(i);
  }
  return flip;
}

Dataset load_ssv2(const std::string& root_in, const std::string& split) {
  VG_CHECK(split == "train" || split == "validation",
           "load_ssv2: split must be 'train' or 'validation', got '" << split << "'");
  const fs::path root(root_in);
  const std::string labels_path =
      find_file({root / "labels.json", root / "something-something-v2-labels.json", root / "labels" / "labels.json",
                 root / "labels" / "something-something-v2-labels.json"},
                "Something-Something V2 labels file");
  const std::string split_path =
      find_file({root / (split + ".json"), root / ("something-something-v2-" + split + ".json"),
                 root / "labels" / (split + ".json"), root / "labels" / ("something-something-v2-" + split + ".json")},
                "Something-Something V2 " + split + " list");
  const std::string video_dir = find_dir({root / "20bn-something-something-v2", root / "videos", root});

  const json labels = parse_json_file(labels_path);
  VG_CHECK(labels.is_object(), "load_ssv2: '" << labels_path << "' must map class names to indices");
  Dataset ds;
  std::map<std::string, std::int64_t> index;
  for (auto it = labels.begin(); it != labels.end(); ++it) {
    std::int64_t v = -1;
    if (it.value().is_string()) {
      try {
        std::size_t used = 0;
        v = std::stoll(it.value().get<std::string>(), &used);
        if (used != it.value().get<std::string>().size()) v = -1;
      } catch (const std::exception&) {
        v = -1;
      }
    } else if (it.value().is_number_integer()) {
      v = it.value().get<std::int64_t>();
    }
    VG_CHECK(v >= 0 && v < 100000, "load_ssv2: '" << labels_path << "': class '" << it.key() << "' has index "
                                                  << it.value().dump() << ", not a non-negative integer");
    index[it.key()] = v;
  }
  ds.class_names.assign(index.size(), "");
  for (const auto& [name, v] : index) {
    VG_CHECK(v < static_cast<std::int64_t>(index.size()) && ds.class_names[v].empty(),
             "load_ssv2: '" << labels_path << "': indices must be 0.." << index.size() - 1 << " without repeats; '"
                            << name << "' has " << v);
    ds.class_names[v] = name;
  }
  ds.flip_labels = mirror_labels(ds.class_names);

  const json list = parse_json_file(split_path);
  VG_CHECK(list.is_array(), "load_ssv2: '" << split_path << "' must be a JSON array of videos");
  for (std::size_t i = 0; i < list.size(); ++i) {
    const json& e = list[i];
    VG_CHECK(e.is_object() && e.contains("id") && e.contains("template") && e["template"].is_string() &&
                 (e["id"].is_string() || e["id"].is_number_integer()),
             "load_ssv2: '" << split_path << "' entry " << i << " needs a string or integer \"id\" and a \"template\"");
    const std::string id = e["id"].is_string() ? e["id"].get<std::string>() : std::to_string(e["id"].get<std::int64_t>());
    const std::string name = strip_template(e["template"].get<std::string>());
    auto it = index.find(name);
    VG_CHECK(it != index.end(), "load_ssv2: '" << split_path << "' entry " << i << " (id " << id << "): class '"
                                               << name << "' is not in " << labels_path);
    ds.samples.push_back({(fs::path(video_dir) / (id + ".webm")).string(), it->second});
  }
  return ds;
}

Dataset load_ssv1(const std::string& root_in, const std::string& split) {
  VG_CHECK(split == "train" || split == "validation",
           "load_ssv1: split must be 'train' or 'validation', got '" << split << "'");
  const fs::path root(root_in);
  const std::string labels_path = find_file(
      {root / "something-something-v1-labels.csv", root / "labels" / "something-something-v1-labels.csv"},
      "Something-Something V1 labels file");
  const std::string split_path = find_file({root / ("something-something-v1-" + split + ".csv"),
                                            root / "labels" / ("something-something-v1-" + split + ".csv")},
                                           "Something-Something V1 " + split + " list");
  const std::string frame_dir = find_dir({root / "20bn-something-something-v1", root});
  Dataset ds;
  std::map<std::string, std::int64_t> index;
  {
    std::istringstream in(read_file(labels_path));
    std::string line;
    while (std::getline(in, line)) {
      line = trim(line);
      if (line.empty()) continue;
      VG_CHECK(!index.count(line), "load_ssv1: '" << labels_path << "' lists class '" << line << "' twice");
      index[line] = static_cast<std::int64_t>(ds.class_names.size());
      ds.class_names.push_back(line);
    }
  }
  ds.flip_labels = mirror_labels(ds.class_names);
  std::istringstream in(read_file(split_path));
  std::string line;
  for (int lineno = 1; std::getline(in, line); ++lineno) {
    line = trim(line);
    if (line.empty()) continue;
    const auto semi = line.find(';');
    VG_CHECK(semi != std::string::npos && semi > 0,
             "load_ssv1: '" << split_path << "' line " << lineno << " is not 'id;class name': '" << line << "'");
    const std::string id = line.substr(0, semi), name = line.substr(semi + 1);
    auto it = index.find(name);
    VG_CHECK(it != index.end(), "load_ssv1: '" << split_path << "' line " << lineno << ": class '" << name
                                               << "' is not in " << labels_path);
    ds.samples.push_back({(fs::path(frame_dir) / id).string(), it->second});
  }
  return ds;
}

Dataset load_list(const std::string& list_file, const std::string& root, const std::vector<std::string>& names) {
  Dataset ds;
  ds.class_names = names;
  std::istringstream in(read_file(list_file));
  std::string line;
  std::int64_t max_label = -1;
  for (int lineno = 1; std::getline(in, line); ++lineno) {
    line = trim(line);
    if (line.empty() || line[0] == '#') continue;
    const auto space = line.find_last_of(" \t");
    VG_CHECK(space != std::string::npos, "load_list: '" << list_file << "' line " << lineno
                                                        << " is not 'path label': '" << line << "'");
    const std::string path = trim(line.substr(0, space)), label_text = line.substr(space + 1);
    std::int64_t label = -1;
    try {
      std::size_t used = 0;
      label = std::stoll(label_text, &used);
      if (used != label_text.size()) label = -1;
    } catch (const std::exception&) {
      label = -1;
    }
    VG_CHECK(label >= 0, "load_list: '" << list_file << "' line " << lineno << ": label '" << label_text
                                        << "' is not a non-negative integer");
    VG_CHECK(names.empty() || label < static_cast<std::int64_t>(names.size()),
             "load_list: '" << list_file << "' line " << lineno << ": label " << label << " but only "
                            << names.size() << " classes are named");
    max_label = std::max(max_label, label);
    ds.samples.push_back({(fs::path(root) / path).string(), label});
  }
  if (ds.class_names.empty())
    for (std::int64_t i = 0; i <= max_label; ++i) ds.class_names.push_back(std::to_string(i));
  ds.flip_labels = mirror_labels(ds.class_names);
  return ds;
}

}  // namespace vidgrad::data
