// rewas_client: send a video and a prompt to the rewas-rt HTTP service, write the sound.
//
//   rewas_client --url http://127.0.0.1:8000 --video clip.mp4 --prompt "rain on a roof" --out rain.wav
//                [--steps N] [--guidance G] [--eta E] [--seed S] [--candidates N] [--start SECONDS]
//                [--duration SECONDS|full] [--sampler NAME] [--guidance-interval-low/-high SIGMA]
//                [--hint-mean] [--energy-scale X] [--energy-offset X] [--energy-clip-min X]
//                [--energy-clip-max X] [--energy-curve FILE] [--format wav|mp4]
//                [--api-key-file FILE] [--timeout SECONDS]
//
// The request is POST /v1/generate as multipart/form-data: the file field `video`, the
// text field `prompt`, one text field per option (same names as the service's options,
// `--energy-scale` -> `energy_scale`) and optionally the file field `energy_curve`.
// Options are validated by the service, not here: a refused value comes back as
// HTTP 400 with {"error": "<one line>"}, which this client prints.
//
// The response body (audio/wav; video/mp4 with --format mp4; a zip of candidate-N files
// and result.json when --candidates > 1) is written to --out atomically: to a temporary
// file beside it, renamed when complete. Nothing is written on any error.
//
// API key: --api-key-file FILE, else $REWAS_API_KEY; sent as "Authorization: Bearer <key>".
//
// Exit status: 0 written; 1 the service answered with an error; 2 bad command line or
// unreadable input file; 3 no answer (cannot connect, timeout); 4 cannot write --out.

#include <curl/curl.h>
#include <nlohmann/json.hpp>

#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <sys/stat.h>
#include <unistd.h>
#include <utility>
#include <vector>

namespace {

constexpr int kOk = 0, kServiceError = 1, kUsage = 2, kTransport = 3, kOutput = 4;

// Command-line flag -> form field of an option that takes a value.
const std::vector<std::pair<std::string, std::string>> kValueOptions = {
    {"--steps", "steps"},
    {"--guidance", "guidance"},
    {"--eta", "eta"},
    {"--seed", "seed"},
    {"--candidates", "candidates"},
    {"--start", "start"},
    {"--duration", "duration"},
    {"--sampler", "sampler"},
    {"--guidance-interval-low", "guidance_interval_low"},
    {"--guidance-interval-high", "guidance_interval_high"},
    {"--energy-scale", "energy_scale"},
    {"--energy-offset", "energy_offset"},
    {"--energy-clip-min", "energy_clip_min"},
    {"--energy-clip-max", "energy_clip_max"},
    {"--format", "format"},
};

struct Args {
  std::string url, video, prompt, out, energy_curve, api_key_file;
  bool have_prompt = false;
  long timeout_s = 600;
  std::vector<std::pair<std::string, std::string>> fields;  // options, in command-line order
};

struct Failure {
  int code;
  std::string message;
};

void usage(std::ostream &os) {
  os << "usage: rewas_client --url URL --video FILE --prompt TEXT --out FILE [options]\n"
        "options (sent to the service, which validates them):\n";
  for (const auto &[flag, field] : kValueOptions) os << "  " << flag << " VALUE\n";
  os << "  --hint-mean\n"
        "  --energy-curve FILE   .csv or .npy curve replacing the one predicted from the video\n"
        "client:\n"
        "  --api-key-file FILE   API key (default: $REWAS_API_KEY)\n"
        "  --timeout SECONDS     whole request, default 600\n";
}

bool readable_file(const std::string &path) {
  struct stat st {};
  return stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) && access(path.c_str(), R_OK) == 0;
}

Args parse_args(int argc, char **argv) {
  Args a;
  std::map<std::string, std::string *> strings = {
      {"--url", &a.url},   {"--video", &a.video},        {"--prompt", &a.prompt},
      {"--out", &a.out},   {"--energy-curve", &a.energy_curve}, {"--api-key-file", &a.api_key_file},
  };
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i];
    if (flag == "-h" || flag == "--help") {
      usage(std::cout);
      std::exit(kOk);
    }
    if (flag == "--hint-mean") {
      a.fields.emplace_back("hint_mean", "true");
      continue;
    }
    if (i + 1 >= argc) throw Failure{kUsage, flag + " needs a value (see --help)"};
    std::string value = argv[++i];
    if (auto it = strings.find(flag); it != strings.end()) {
      *it->second = value;
      if (flag == "--prompt") a.have_prompt = true;
      continue;
    }
    if (flag == "--timeout") {
      char *end = nullptr;
      errno = 0;
      long t = std::strtol(value.c_str(), &end, 10);
      if (errno != 0 || end == value.c_str() || *end != '\0' || t < 1 || t > 86400)
        throw Failure{kUsage, "--timeout must be a whole number of seconds in 1..86400, got '" + value + "'"};
      a.timeout_s = t;
      continue;
    }
    bool known = false;
    for (const auto &[opt, field] : kValueOptions) {
      if (flag == opt) {
        a.fields.emplace_back(field, value);
        known = true;
        break;
      }
    }
    if (!known) throw Failure{kUsage, "unknown argument '" + flag + "' (see --help)"};
  }
  if (a.url.empty()) throw Failure{kUsage, "--url is required (e.g. http://127.0.0.1:8000)"};
  if (a.video.empty()) throw Failure{kUsage, "--video is required"};
  if (!a.have_prompt) throw Failure{kUsage, "--prompt is required"};
  if (a.out.empty()) throw Failure{kUsage, "--out is required"};
  if (!readable_file(a.video)) throw Failure{kUsage, "cannot read video file " + a.video};
  if (!a.energy_curve.empty() && !readable_file(a.energy_curve))
    throw Failure{kUsage, "cannot read energy curve file " + a.energy_curve};
  while (!a.url.empty() && a.url.back() == '/') a.url.pop_back();
  return a;
}

std::string api_key(const Args &a) {
  std::string key;
  if (!a.api_key_file.empty()) {
    std::ifstream f(a.api_key_file);
    if (!f) throw Failure{kUsage, "cannot read API key file " + a.api_key_file};
    std::getline(f, key);
  } else if (const char *env = std::getenv("REWAS_API_KEY")) {
    key = env;
  }
  while (!key.empty() && (key.back() == '\r' || key.back() == ' ' || key.back() == '\t')) key.pop_back();
  return key;
}

struct Response {
  long status = 0;
  std::string body;
  std::map<std::string, std::string> headers;  // lower-case names
};

size_t on_body(char *data, size_t size, size_t n, void *user) {
  static_cast<Response *>(user)->body.append(data, size * n);
  return size * n;
}

size_t on_header(char *data, size_t size, size_t n, void *user) {
  std::string line(data, size * n);
  auto colon = line.find(':');
  if (colon != std::string::npos) {
    std::string name = line.substr(0, colon), value = line.substr(colon + 1);
    for (auto &c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    auto first = value.find_first_not_of(" \t"), last = value.find_last_not_of(" \t\r\n");
    static_cast<Response *>(user)->headers[name] =
        first == std::string::npos ? "" : value.substr(first, last - first + 1);
  }
  return size * n;
}

// One line of the service's JSON error body, or what the body shows when it is not JSON.
std::string error_message(const Response &r) {
  auto j = nlohmann::json::parse(r.body, nullptr, /*allow_exceptions=*/false);
  if (j.is_object() && j.contains("error") && j["error"].is_string()) return j["error"].get<std::string>();
  std::string shown = r.body.substr(0, 200);
  for (auto &c : shown)
    if (c == '\n' || c == '\r') c = ' ';
  auto type = r.headers.count("content-type") ? r.headers.at("content-type") : std::string("no content type");
  return "unexpected answer (" + type + "): " + (shown.empty() ? std::string("empty body") : shown);
}

Response post(const Args &a) {
  CURL *curl = curl_easy_init();
  if (!curl) throw Failure{kTransport, "cannot initialise libcurl"};
  curl_mime *form = curl_mime_init(curl);
  auto add_text = [&](const std::string &name, const std::string &value) {
    curl_mimepart *part = curl_mime_addpart(form);
    curl_mime_name(part, name.c_str());
    curl_mime_data(part, value.data(), value.size());
  };
  auto add_file = [&](const std::string &name, const std::string &path) {
    curl_mimepart *part = curl_mime_addpart(form);
    curl_mime_name(part, name.c_str());
    if (curl_mime_filedata(part, path.c_str()) != CURLE_OK) throw Failure{kUsage, "cannot read " + path};
  };
  add_file("video", a.video);
  add_text("prompt", a.prompt);
  for (const auto &[name, value] : a.fields) add_text(name, value);
  if (!a.energy_curve.empty()) add_file("energy_curve", a.energy_curve);

  struct curl_slist *headers = nullptr;
  std::string key = api_key(a);
  if (!key.empty()) headers = curl_slist_append(headers, ("Authorization: Bearer " + key).c_str());
  headers = curl_slist_append(headers, "Expect:");  // send the body at once, no 100-continue round trip

  Response r;
  char why[CURL_ERROR_SIZE] = "";
  std::string endpoint = a.url + "/v1/generate";
  curl_easy_setopt(curl, CURLOPT_URL, endpoint.c_str());
  curl_easy_setopt(curl, CURLOPT_MIMEPOST, form);
  curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &r);
  curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(curl, CURLOPT_HEADERDATA, &r);
  curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, why);
  curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT, 10L);
  curl_easy_setopt(curl, CURLOPT_TIMEOUT, a.timeout_s);
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(curl, CURLOPT_USERAGENT, "rewas_client/1");
  CURLcode rc = curl_easy_perform(curl);
  curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &r.status);
  curl_slist_free_all(headers);
  curl_mime_free(form);
  curl_easy_cleanup(curl);
  if (rc != CURLE_OK)
    throw Failure{kTransport, "no answer from " + endpoint + ": " + (why[0] ? why : curl_easy_strerror(rc))};
  return r;
}

// Write `data` to `path` through a temporary file in the same directory, renamed at the end.
void write_atomically(const std::string &path, const std::string &data) {
  auto slash = path.find_last_of('/');
  std::string dir = slash == std::string::npos ? "." : path.substr(0, slash + 1);
  std::string name = slash == std::string::npos ? path : path.substr(slash + 1);
  std::string tmpl = (slash == std::string::npos ? "" : dir) + "." + name + ".part-XXXXXX";
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  int fd = mkstemp(buf.data());
  if (fd < 0) throw Failure{kOutput, "cannot write " + path + ": " + std::strerror(errno)};
  std::string tmp(buf.data());
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      ::close(fd);
      ::unlink(tmp.c_str());
      throw Failure{kOutput, "cannot write " + path + ": " + std::strerror(err)};
    }
    done += static_cast<size_t>(n);
  }
  mode_t mask = umask(0);
  umask(mask);
  bool ok = fchmod(fd, 0666 & ~mask) == 0 && fsync(fd) == 0;
  ok = (::close(fd) == 0) && ok;
  if (!ok || std::rename(tmp.c_str(), path.c_str()) != 0) {
    int err = errno;
    ::unlink(tmp.c_str());
    throw Failure{kOutput, "cannot write " + path + ": " + std::strerror(err)};
  }
}

}  // namespace

int main(int argc, char **argv) {
  curl_global_init(CURL_GLOBAL_DEFAULT);
  int code = kOk;
  try {
    Args args = parse_args(argc, argv);
    Response r = post(args);
    if (r.status != 200) {
      std::string msg = "HTTP " + std::to_string(r.status) + ": " + error_message(r);
      if (r.headers.count("retry-after")) msg += " (retry after " + r.headers["retry-after"] + " s)";
      throw Failure{kServiceError, msg};
    }
    write_atomically(args.out, r.body);
    std::cerr << "wrote " << args.out << " (" << r.body.size() << " bytes, "
              << (r.headers.count("content-type") ? r.headers["content-type"] : "?") << ", seed "
              << (r.headers.count("x-rewas-seed") ? r.headers["x-rewas-seed"] : "?") << ")\n";
  } catch (const Failure &f) {
    std::cerr << "error: " << f.message << "\n";
    code = f.code;
  }
  curl_global_cleanup();
  return code;
}
