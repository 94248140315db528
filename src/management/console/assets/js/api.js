/* The management API client. Credentials are kept for this browser tab only
 * (sessionStorage) and sent as HTTP Basic on every call. `credentials: "omit"` keeps the
 * browser from using or offering its own HTTP-auth prompt when a 401 carries
 * WWW-Authenticate: the console shows its own login page instead. */
"use strict";

var Q = window.Q || (window.Q = {});

Q.ApiError = function ApiError(status, error, reason) {
  this.status = status;
  this.error = error;
  this.reason = reason;
  this.message = (reason || error || "HTTP " + status);
};
Q.ApiError.prototype = Object.create(Error.prototype);

Q.api = {
  STORE_KEY: "qgate.console.auth",
  STORE_USER: "qgate.console.user",

  /* Called with a reason when the broker no longer accepts the stored credentials. */
  onUnauthorized: function () {},

  setCredentials: function (user, password) {
    /* btoa takes Latin-1; encode UTF-8 first so non-ASCII passwords work. */
    var bytes = new TextEncoder().encode(user + ":" + password);
    var bin = "";
    bytes.forEach(function (b) { bin += String.fromCharCode(b); });
    sessionStorage.setItem(this.STORE_KEY, btoa(bin));
    sessionStorage.setItem(this.STORE_USER, user);
  },
  clearCredentials: function () {
    sessionStorage.removeItem(this.STORE_KEY);
    sessionStorage.removeItem(this.STORE_USER);
  },
  hasCredentials: function () { return !!sessionStorage.getItem(this.STORE_KEY); },

  /* One path segment: the vhost "/" becomes %2F, as the API wants. */
  seg: function (s) { return encodeURIComponent(s); },

  request: function (method, path, body, extraHeaders) {
    var headers = {"Authorization": "Basic " + (sessionStorage.getItem(this.STORE_KEY) || "")};
    if (body !== undefined) headers["Content-Type"] = "application/json";
    Object.keys(extraHeaders || {}).forEach(function (k) { headers[k] = extraHeaders[k]; });
    var self = this;
    return fetch("/api" + path, {
      method: method,
      headers: headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "omit",
      cache: "no-store",
    }).then(function (resp) {
      return resp.text().then(function (text) {
        var data = null;
        if (text) {
          try { data = JSON.parse(text); } catch (e) { data = null; }
        }
        if (resp.ok) return data;
        var err = new Q.ApiError(resp.status, data && data.error, data && data.reason);
        if (resp.status === 401) return self.handle401(err, path);
        throw err;
      });
    });
  },

  /* The API answers 401 both for bad credentials and for an action the user's tags do
   * not allow (as RabbitMQ does). Only the first ends the session: ask whoami which one. */
  handle401: function (err, path) {
    var self = this;
    if (path === "/whoami") {
      self.onUnauthorized(err.reason || "Login failed");
      throw err;
    }
    return this.request("GET", "/whoami").then(function () {
      var reason = err.reason || "not allowed for this user";
      err.message = /^access refused/i.test(reason) ? reason : "Access refused: " + reason;
      throw err;
    });
  },

  get: function (path) { return this.request("GET", path); },
  put: function (path, body) { return this.request("PUT", path, body === undefined ? {} : body); },
  post: function (path, body) { return this.request("POST", path, body === undefined ? {} : body); },
  del: function (path, headers) { return this.request("DELETE", path, undefined, headers); },
};
