"use strict";
// Sign-in: the token goes to the server with fetch (never a native form submission) and is
// exchanged for an HttpOnly session cookie. It is never stored by this page.
(function () {
  const input = document.getElementById("token");
  const button = document.getElementById("sign-in");
  const error = document.getElementById("token-error");
  if (new URLSearchParams(location.search).get("ended") === "1") {
    document.getElementById("session-ended").hidden = false;
  }

  async function signIn() {
    error.hidden = true;
    const token = input.value;
    input.value = "";
    if (!token.trim()) {
      error.textContent = "Enter a vault token.";
      error.hidden = false;
      return;
    }
    button.disabled = true;
    try {
      const resp = await fetch("/auth/session", {
        method: "POST",
        headers: { "Content-Type": "application/json", "Accept": "application/json" },
        body: JSON.stringify({ token: token }),
        credentials: "same-origin",
        cache: "no-store",
      });
      if (resp.ok) {
        location.assign("/");
        return;
      }
      let message = "Sign-in failed.";
      try {
        const data = await resp.json();
        if (resp.status === 401) message = "This token is not valid.";
        else if (data.error && data.error.message) message = data.error.message;
      } catch (e) { /* keep the generic message */ }
      error.textContent = message;
      error.hidden = false;
    } catch (e) {
      error.textContent = "The vault could not be reached.";
      error.hidden = false;
    } finally {
      button.disabled = false;
    }
  }

  button.addEventListener("click", signIn);
  input.addEventListener("keydown", function (event) {
    if (event.key === "Enter") { event.preventDefault(); signIn(); }
  });
  input.focus();
})();
