#include <napi.h>

#include "Capture.hh"

extern "C" {
#include "tcpaudit.h"
}

// Module entry (JS thread): the Capture class and the record constants the decoder checks.
static Napi::Object init(Napi::Env env, Napi::Object exports) {
  exports.Set("Capture", Capture::define(env));
  exports.Set("layoutVersion", Napi::Number::New(env, TCPAUDIT_LAYOUT_VERSION));
  exports.Set("recordSize", Napi::Number::New(env, TCPAUDIT_RECORD_SIZE));
  return exports;
}

NODE_API_MODULE(tcpaudit, init)


