-- wrk script for the etcd reads workload: POST /v3/kv/range for key "foo" (base64 "Zm9v")
-- through etcd's JSON gateway on the client port.
wrk.method = "POST"
wrk.body = '{"key":"Zm9v"}'
wrk.headers["Content-Type"] = "application/json"
