// Dataset indexes: which files hold which clip and label. Parsers for
// Something-Something V2 (labels.json + train/validation JSON, <id>.webm videos),
// Something-Something V1 (CSV-style lists, folders of 00001.jpg frames) and a generic
// list file ("relative/path label" per line, the path a video file or a frame folder).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace vidgrad::data {

struct Sample {
  std::string path;  // a video file, or a folder of numbered JPEG frames
  std::int64_t label = 0;
};

struct Dataset {
  std::vector<Sample> samples;
  std::vector<std::string> class_names;  // index = label
  // Label of the horizontally mirrored clip, for classes whose name contains "left" or
  // "right" and whose mirrored name is also a class; others map to themselves.
  std::vector<std::int64_t> flip_labels;
};

// Something-Something V2. `root` holds the videos (<id>.webm) either directly or under
// 20bn-something-something-v2/ or videos/; the label files are looked up as
// labels.json / something-something-v2-labels.json and <split>.json /
// something-something-v2-<split>.json, in root or root/labels. split: "train" or "validation".
Dataset load_ssv2(const std::string& root, const std::string& split);

// Something-Something V1: something-something-v1-labels.csv (one class per line),
// something-something-v1-<split>.csv ("id;class name" per line), frames in
// <root>/20bn-something-something-v1/<id>/ or <root>/<id>/.
Dataset load_ssv1(const std::string& root, const std::string& split);

// "relative/path label" per line (label an integer); blank lines and # comments skipped.
// Paths are relative to `root`. Class names are "0", "1", ... unless `class_names` is given.
Dataset load_list(const std::string& list_file, const std::string& root,
                  const std::vector<std::string>& class_names = {});

// Strips the brackets of a Something-Something template:
// "Putting [something] on [something]" -> "Putting something on something".
std::string strip_template(const std::string& text);

// flip_labels from class names: "left" and "right" swapped word-wise.
std::vector<std::int64_t> mirror_labels(const std::vector<std::string>& class_names);

}  // namespace vidgrad::data
