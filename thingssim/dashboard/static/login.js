"use strict";
// Shows "wrong password" after a failed attempt (the server redirects to /login?failed=1).
document.addEventListener("DOMContentLoaded", () => {
  if (new URLSearchParams(location.search).has("failed")) {
    document.getElementById("failed").hidden = false;
  }
});
