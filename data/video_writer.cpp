// RGB -> YUV 4:2:0 -> encoder -> muxer, with RAII cleanup on every error path.
#include "vidgrad/data/video_writer.h"

extern "C" {
#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavutil/opt.h>
#include <libswscale/swscale.h>
}

#include <algorithm>
#include <memory>

#include "vidgrad/core/error.h"
#include "vidgrad/data/ffmpeg_util.h"
#include "vidgrad/data/video.h"

namespace vidgrad::data {

namespace {

const auto av_error = ffmpeg::error_string;

struct OutputCloser {
  void operator()(AVFormatContext* oc) const {
    if (oc->pb) avio_closep(&oc->pb);
    avformat_free_context(oc);
  }
};

}  // namespace

void write_video(const std::string& path, const std::vector<Image>& frames, const VideoWriterOptions& o) {
  quiet_ffmpeg_logs();
  const std::string where = "write_video '" + path + "': ";
  VG_CHECK(!frames.empty(), where << "no frames to write");
  const int w = frames[0].width, h = frames[0].height;
  VG_CHECK(w > 0 && h > 0 && w % 2 == 0 && h % 2 == 0, where << "frame size " << w << "x" << h
                                                             << " must be positive and even (YUV 4:2:0)");
  for (const Image& f : frames)
    VG_CHECK(f.width == w && f.height == h && f.rgb.size() == static_cast<std::size_t>(w) * h * 3,
             where << "every frame must be " << w << "x" << h << " RGB");
  VG_CHECK(o.fps >= 1, where << "fps must be >= 1, got " << o.fps);

  AVFormatContext* raw = nullptr;
  int r = avformat_alloc_output_context2(&raw, nullptr, nullptr, path.c_str());
  VG_CHECK(r >= 0 && raw, where << "no container format for this file name: " << av_error(r));
  std::unique_ptr<AVFormatContext, OutputCloser> oc(raw);
  oc->flags |= AVFMT_FLAG_BITEXACT;  // no random segment UIDs or version strings
  const AVCodec* codec = avcodec_find_encoder_by_name(o.codec.c_str());
  VG_CHECK(codec != nullptr, where << "FFmpeg has no encoder '" << o.codec << "'");
  AVStream* st = avformat_new_stream(oc.get(), nullptr);
  VG_CHECK(st != nullptr, where << "out of memory");
  ffmpeg::CodecPtr cc(avcodec_alloc_context3(codec));
  cc->width = w;
  cc->height = h;
  cc->pix_fmt = AV_PIX_FMT_YUV420P;
  cc->time_base = AVRational{1, o.fps};
  cc->framerate = AVRational{o.fps, 1};
  cc->gop_size = 12;
  cc->thread_count = 1;  // deterministic output
  cc->flags |= AV_CODEC_FLAG_BITEXACT;
  if (oc->oformat->flags & AVFMT_GLOBALHEADER) cc->flags |= AV_CODEC_FLAG_GLOBAL_HEADER;
  std::map<std::string, std::string> options;
  if (o.codec == "libvpx-vp9" || o.codec == "libvpx")
    options = {{"deadline", "realtime"}, {"cpu-used", "8"}, {"crf", "32"}, {"b", "0"}};
  else if (o.codec == "libx264")
    options = {{"preset", "ultrafast"}, {"crf", "23"}};
  for (const auto& [k, v] : o.codec_options) options[k] = v;
  for (const auto& [k, v] : options) {
    r = av_opt_set(cc.get(), k.c_str(), v.c_str(), AV_OPT_SEARCH_CHILDREN);
    VG_CHECK(r >= 0, where << "encoder option " << k << "=" << v << " rejected: " << av_error(r));
  }
  r = avcodec_open2(cc.get(), codec, nullptr);
  VG_CHECK(r >= 0, where << "cannot open encoder " << o.codec << ": " << av_error(r));
  VG_CHECK(avcodec_parameters_from_context(st->codecpar, cc.get()) >= 0, where << "bad codec parameters");
  st->time_base = cc->time_base;
  r = avio_open(&oc->pb, path.c_str(), AVIO_FLAG_WRITE);
  VG_CHECK(r >= 0, where << "cannot create the file: " << av_error(r));
  r = avformat_write_header(oc.get(), nullptr);
  VG_CHECK(r >= 0, where << "cannot write the container header: " << av_error(r));

  ffmpeg::SwsPtr sws(
      sws_getContext(w, h, AV_PIX_FMT_RGB24, w, h, AV_PIX_FMT_YUV420P, SWS_BILINEAR | SWS_ACCURATE_RND | SWS_BITEXACT,
                     nullptr, nullptr, nullptr));
  VG_CHECK(sws != nullptr, where << "no RGB to YUV conversion");
  ffmpeg::FramePtr frame(av_frame_alloc());
  frame->format = AV_PIX_FMT_YUV420P;
  frame->width = w;
  frame->height = h;
  VG_CHECK(av_frame_get_buffer(frame.get(), 0) >= 0, where << "out of memory");
  ffmpeg::PacketPtr pkt(av_packet_alloc());

  auto drain = [&]() {
    while (true) {
      const int rr = avcodec_receive_packet(cc.get(), pkt.get());
      if (rr == AVERROR(EAGAIN) || rr == AVERROR_EOF) return;
      VG_CHECK(rr >= 0, where << "encoding failed: " << av_error(rr));
      // Every frame lasts one tick; without a duration the MP4 muxer's edit list drops
      // the last frame.
      if (pkt->duration <= 0) pkt->duration = 1;
      av_packet_rescale_ts(pkt.get(), cc->time_base, st->time_base);
      pkt->stream_index = st->index;
      const int wr = av_interleaved_write_frame(oc.get(), pkt.get());
      VG_CHECK(wr >= 0, where << "writing a packet failed: " << av_error(wr));
    }
  };
  // swscale may read a vector width past the end of a row, so rows are staged in a
  // padded buffer rather than read from the caller's tightly packed image.
  const int stride = (3 * w + 63) / 64 * 64;
  std::vector<std::uint8_t> staged(static_cast<std::size_t>(stride) * (h + 1));
  for (std::size_t i = 0; i < frames.size(); ++i) {
    VG_CHECK(av_frame_make_writable(frame.get()) >= 0, where << "out of memory");
    for (int y = 0; y < h; ++y)
      std::copy_n(frames[i].rgb.data() + static_cast<std::size_t>(y) * w * 3, 3 * w,
                  staged.data() + static_cast<std::size_t>(y) * stride);
    const uint8_t* src[4] = {staged.data(), nullptr, nullptr, nullptr};
    const int src_stride[4] = {stride, 0, 0, 0};
    sws_scale(sws.get(), src, src_stride, 0, h, frame->data, frame->linesize);
    frame->pts = static_cast<std::int64_t>(i);
    r = avcodec_send_frame(cc.get(), frame.get());
    VG_CHECK(r >= 0, where << "encoding frame " << i << " failed: " << av_error(r));
    drain();
  }
  VG_CHECK(avcodec_send_frame(cc.get(), nullptr) >= 0, where << "flushing the encoder failed");
  drain();
  r = av_write_trailer(oc.get());
  VG_CHECK(r >= 0, where << "cannot finish the file: " << av_error(r));
}

}  // namespace vidgrad::data
