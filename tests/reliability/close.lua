-- One request per connection: the client asks the server to close after each response.
wrk.headers["Connection"] = "close"
