#!/usr/bin/env python3
"""What `scripts/dev demo` plays of the platforms around Sluice.

  demo_platforms.py catalog PORT FILE.jsonl
      A Magento-like REST catalog on 127.0.0.1:PORT: GET /V1/products with
      searchCriteria[pageSize] and searchCriteria[currentPage], answering
      {"items": [...], "total_count": N}; past the last page it answers the
      last page again, as Magento does.

  demo_platforms.py lwa PORT SECRETS_DIR
      A Login with Amazon token endpoint on 127.0.0.1:PORT: POST
      /auth/o2/token with grant_type=refresh_token, refresh_token,
      client_id and client_secret in the form answers an access token
      (expires_in 3600); anything else answers 400 invalid_grant.

  demo_platforms.py show SINK.jsonl
      One line per request `sluice sink` received: method, URL, the
      credential headers sent (never their values), and the body's start.

  demo_platforms.py send BASE SECRETS_DIR FIXTURES...
      Sends each fixture's payload to BASE/v1/sources/acme/<platform>,
      signed as the platform documents it: Shopify (X-Shopify-Hmac-Sha256,
      base64 HMAC-SHA256 of the body), WooCommerce (X-WC-Webhook-Signature,
      the same), Square (x-square-hmacsha256-signature over the
      notification URL followed by the body). Then sends the first Shopify
      delivery again, as Shopify retries it: a duplicate.
"""
import base64
import hashlib
import hmac
import http.server
import json
import sys
import urllib.parse
import urllib.request

SQUARE_URL = "http://127.0.0.1:8080/v1/sources/acme/square"


def catalog(port, path):
    products = [json.loads(line)["payload"] for line in open(path) if line.strip()]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            url = urllib.parse.urlparse(self.path)
            query = dict(urllib.parse.parse_qsl(url.query))
            size = max(1, int(query.get("searchCriteria[pageSize]", "20")))
            last = max(1, -(-len(products) // size))
            page = min(max(1, int(query.get("searchCriteria[currentPage]", "1"))), last)
            body = json.dumps({
                "items": products[(page - 1) * size: page * size],
                "search_criteria": {"page_size": size, "current_page": page},
                "total_count": len(products),
            }).encode()
            self.send_response(200 if url.path == "/V1/products" else 404)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    http.server.ThreadingHTTPServer(("127.0.0.1", int(port)), Handler).serve_forever()


def lwa(port, secrets):
    expected = {
        "grant_type": "refresh_token",
        "refresh_token": open(f"{secrets}/lwa-refresh-token").read().strip(),
        "client_secret": open(f"{secrets}/lwa-client-secret").read().strip(),
    }
    issued = [0]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            length = int(self.headers.get("content-length", "0"))
            form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
            if self.path == "/auth/o2/token" and all(form.get(k) == v for k, v in expected.items()):
                issued[0] += 1
                status, answer = 200, {"access_token": f"Atza|demo-access-token-{issued[0]}", "token_type": "bearer", "expires_in": 3600}
            else:
                status, answer = 400, {"error": "invalid_grant"}
            body = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    http.server.ThreadingHTTPServer(("127.0.0.1", int(port)), Handler).serve_forever()


def sign(secret, *parts):
    mac = hmac.new(secret.encode(), digestmod=hashlib.sha256)
    for part in parts:
        mac.update(part)
    return base64.b64encode(mac.digest()).decode()


def post(url, headers, body):
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def send(base, secrets, fixtures):
    secret = {name: open(f"{secrets}/{name}").read().strip() for name in ("shopify", "woocommerce", "square")}
    first_shopify = None
    for path in fixtures:
        event = json.load(open(path))
        source, body = event.get("source"), json.dumps(event["payload"]).encode()
        if source == "shopify":
            headers = {
                "X-Shopify-Hmac-Sha256": sign(secret["shopify"], body),
                "X-Shopify-Topic": "products/update",
                "X-Shopify-Event-Id": f"demo-{event['id']}",
                "X-Shopify-Shop-Domain": "acme-demo.myshopify.com",
                "Content-Type": "application/json",
            }
            first_shopify = first_shopify or (headers, body)
        elif source == "woocommerce":
            headers = {
                "X-WC-Webhook-Signature": sign(secret["woocommerce"], body),
                "X-WC-Webhook-Topic": "product.updated",
                "X-WC-Webhook-Delivery-ID": f"demo-{event['id']}",
                "Content-Type": "application/json",
            }
        elif source == "square" and "event_id" in event["payload"]:
            headers = {
                "x-square-hmacsha256-signature": sign(secret["square"], SQUARE_URL.encode(), body),
                "Content-Type": "application/json",
            }
        else:
            continue
        status, answer = post(f"{base}/v1/sources/acme/{source}", headers, body)
        print(f"{source:<12} {status} {answer}")
    if first_shopify:
        status, answer = post(f"{base}/v1/sources/acme/shopify", *first_shopify)
        print(f"{'shopify':<12} {status} {answer}   <- Shopify's retry of the first delivery: a duplicate")
    # A forged delivery: refused, and counted in sluice_source_refused_total.
    status, _ = post(f"{base}/v1/sources/acme/shopify", {"X-Shopify-Hmac-Sha256": "forged"}, b"{}")
    print(f"{'forged':<12} {status}   <- a bad signature: 401, nothing stored")


def show(path):
    for line in open(path):
        received = json.loads(line)
        url = received["path"] + ("?" + received["query"] if received["query"] else "")
        credentials = ",".join(received["credentials"]) or "-"
        print(f"{received['method']:<5} {url}  [{credentials}]  {json.dumps(received['body'])[:80]}")


if __name__ == "__main__":
    if sys.argv[1] == "catalog":
        catalog(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "show":
        show(sys.argv[2])
    elif sys.argv[1] == "lwa":
        lwa(sys.argv[2], sys.argv[3])
    else:
        send(sys.argv[2], sys.argv[3], sys.argv[4:])
