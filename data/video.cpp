// FFmpeg demux + decode loop with RAII wrappers and an interrupt deadline.
#include "vidgrad/data/video.h"

extern "C" {
#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavutil/imgutils.h>
#include <libswscale/swscale.h>
}

#include <chrono>
#include <mutex>
#include <filesystem>

#include "vidgrad/core/error.h"
#include "vidgrad/data/ffmpeg_util.h"

namespace vidgrad::data {

namespace {

using Clock = std::chrono::steady_clock;

using ffmpeg::FramePtr;
const auto av_error = ffmpeg::error_string;

struct FormatCloser {
  void operator()(AVFormatContext* f) const { avformat_close_input(&f); }
};

constexpr std::size_t kSwsSlack = 256;

// libavformat polls this during blocking I/O; returning 1 aborts the operation.
int interrupt_cb(void* opaque) { return Clock::now() > *static_cast<Clock::time_point*>(opaque) ? 1 : 0; }

}  // namespace

void quiet_ffmpeg_logs() {
  static std::once_flag once;
  std::call_once(once, [] { av_log_set_level(AV_LOG_ERROR); });
}

struct DecodedVideo::State {
  std::vector<FramePtr> frames;
  std::int64_t corrupt_packets = 0;
  std::string path;
};

DecodedVideo::DecodedVideo() : s_(std::make_unique<State>()) {}
DecodedVideo::~DecodedVideo() = default;
DecodedVideo::DecodedVideo(DecodedVideo&&) noexcept = default;
DecodedVideo& DecodedVideo::operator=(DecodedVideo&&) noexcept = default;

std::int64_t DecodedVideo::num_frames() const { return static_cast<std::int64_t>(s_->frames.size()); }
int DecodedVideo::height() const { return s_->frames.empty() ? 0 : s_->frames[0]->height; }
int DecodedVideo::width() const { return s_->frames.empty() ? 0 : s_->frames[0]->width; }
std::int64_t DecodedVideo::corrupt_packets() const { return s_->corrupt_packets; }

Image DecodedVideo::rgb(std::int64_t i) const {
  VG_CHECK(i >= 0 && i < num_frames(), "video '" << s_->path << "': frame " << i << " of " << num_frames()
                                                 << " requested");
  const AVFrame* f = s_->frames[static_cast<std::size_t>(i)].get();
  // swscale's SIMD paths may write up to a vector width past the end of the last row, so
  // the buffer gets slack that is dropped afterwards (shrinking keeps the allocation).
  const std::size_t bytes = static_cast<std::size_t>(f->width) * f->height * 3;
  Image img{f->height, f->width, std::vector<std::uint8_t>(bytes + kSwsSlack)};
  SwsContext* sws = sws_getContext(f->width, f->height, static_cast<AVPixelFormat>(f->format), f->width, f->height,
                                   AV_PIX_FMT_RGB24, SWS_BILINEAR, nullptr, nullptr, nullptr);
  VG_CHECK(sws != nullptr, "video '" << s_->path << "': no conversion from pixel format "
                                     << av_get_pix_fmt_name(static_cast<AVPixelFormat>(f->format)) << " to RGB");
  uint8_t* dst[4] = {img.rgb.data(), nullptr, nullptr, nullptr};
  int dst_stride[4] = {f->width * 3, 0, 0, 0};
  const int rows = sws_scale(sws, f->data, f->linesize, 0, f->height, dst, dst_stride);
  sws_freeContext(sws);
  VG_CHECK(rows == f->height, "video '" << s_->path << "': colour conversion of frame " << i << " failed");
  img.rgb.resize(bytes);
  return img;
}

DecodedVideo decode_video(const std::string& path, const DecodeLimits& limits) {
  quiet_ffmpeg_logs();
  const std::string where = "video '" + path + "': ";
  std::error_code ec;
  VG_CHECK(std::filesystem::is_regular_file(path, ec), where << "no such file");
  VG_CHECK(std::filesystem::file_size(path, ec) > 0, where << "file is empty");

  Clock::time_point deadline =
      Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(limits.max_seconds));
  AVFormatContext* raw = avformat_alloc_context();
  VG_CHECK(raw != nullptr, where << "out of memory");
  raw->interrupt_callback = {interrupt_cb, &deadline};
  AVDictionary* opts = nullptr;
  av_dict_set(&opts, "protocol_whitelist", "file", 0);  // no network, pipe or playlist protocols
  int r = avformat_open_input(&raw, path.c_str(), nullptr, &opts);
  av_dict_free(&opts);
  VG_CHECK(r >= 0, where << "cannot open as a video: " << av_error(r));  // raw is freed on failure
  std::unique_ptr<AVFormatContext, FormatCloser> fmt(raw);
  r = avformat_find_stream_info(fmt.get(), nullptr);
  VG_CHECK(r >= 0, where << "cannot read stream information: " << av_error(r));
  const AVCodec* codec = nullptr;
  const int stream = av_find_best_stream(fmt.get(), AVMEDIA_TYPE_VIDEO, -1, -1, &codec, 0);
  VG_CHECK(stream >= 0 && codec != nullptr, where << "has no decodable video stream");
  const AVCodecParameters* par = fmt->streams[stream]->codecpar;
  VG_CHECK(static_cast<std::int64_t>(par->width) * par->height <= limits.max_pixels,
           where << "frame size " << par->width << "x" << par->height << " exceeds the limit of " << limits.max_pixels
                 << " pixels");

  ffmpeg::CodecPtr cc(avcodec_alloc_context3(codec));
  VG_CHECK(cc != nullptr, where << "out of memory");
  VG_CHECK(avcodec_parameters_to_context(cc.get(), par) >= 0, where << "bad codec parameters");
  cc->thread_count = 1;  // loader workers parallelise across videos, not inside one
  r = avcodec_open2(cc.get(), codec, nullptr);
  VG_CHECK(r >= 0, where << "cannot open the " << codec->name << " decoder: " << av_error(r));

  DecodedVideo out;
  out.s_->path = path;
  ffmpeg::PacketPtr pkt(av_packet_alloc());
  std::int64_t total_pixels = 0;
  auto drain = [&]() {
    while (true) {
      FramePtr frame(av_frame_alloc());
      const int rr = avcodec_receive_frame(cc.get(), frame.get());
      if (rr == AVERROR(EAGAIN) || rr == AVERROR_EOF) return;
      if (rr < 0) {
        ++out.s_->corrupt_packets;
        return;
      }
      VG_CHECK(static_cast<std::int64_t>(frame->width) * frame->height <= limits.max_pixels && frame->width > 0,
               where << "decoded frame size " << frame->width << "x" << frame->height << " exceeds the limit");
      VG_CHECK(out.num_frames() < limits.max_frames,
               where << "has more than " << limits.max_frames << " frames (the max_frames limit)");
      total_pixels += static_cast<std::int64_t>(frame->width) * frame->height;
      VG_CHECK(total_pixels <= limits.max_total_pixels,
               where << "decoded frames exceed the limit of " << limits.max_total_pixels << " pixels in all");
      out.s_->frames.push_back(std::move(frame));
    }
  };
  while (true) {
    VG_CHECK(Clock::now() <= deadline, where << "decoding took longer than " << limits.max_seconds << " s");
    r = av_read_frame(fmt.get(), pkt.get());
    if (r < 0) break;  // end of file, or a damaged tail: keep what was decoded
    if (pkt->stream_index == stream) {
      if (avcodec_send_packet(cc.get(), pkt.get()) < 0) ++out.s_->corrupt_packets;
      drain();
    }
    av_packet_unref(pkt.get());
  }
  VG_CHECK(r == AVERROR_EOF || Clock::now() <= deadline,
           where << "decoding took longer than " << limits.max_seconds << " s");
  avcodec_send_packet(cc.get(), nullptr);  // flush delayed frames
  drain();
  VG_CHECK(out.num_frames() > 0, where << "no frame could be decoded"
                                       << (out.corrupt_packets() ? " (corrupt data)" : ""));
  return out;
}

}  // namespace vidgrad::data
