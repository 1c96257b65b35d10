"""wechatpy on the vector `wxpipe-bench codec` uses: verify msg_signature, decrypt, parse the
XML into wechatpy's message object (`parse_message`, what a Python platform built on wechatpy
does per push), on one thread. Prints pushes/s.
Run by scripts/bench (which installs wechatpy into a virtualenv under target/tools)."""
import json
import sys
import time

from wechatpy import parse_message
from wechatpy.crypto import WeChatCrypto

vectors = json.load(open(sys.argv[1]))
v = next(x for x in vectors if x["name"] == "official-message-push-component")
seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 5.0
crypto = WeChatCrypto(v["token"], v["encoding_aes_key"], v["appid"])
body = (
    "<xml><ToUserName><![CDATA[%s]]></ToUserName><Encrypt><![CDATA[%s]]></Encrypt></xml>"
    % (v["to_user_name"], v["encrypt"])
)

def once():
    plain = crypto.decrypt_message(body, v["msg_signature"], v["timestamp"], v["nonce"])
    return parse_message(plain)

assert once().target == v["to_user_name"]
n = 0
start = time.perf_counter()
while time.perf_counter() - start < seconds:
    for _ in range(100):
        once()
    n += 100
print("%.0f" % (n / (time.perf_counter() - start)))
