// Resumable upload of a delivery in chunks (tre/web/uploads.py describes the protocol). Without this
// script, or in a browser lacking what it needs, the form posts the whole file in one request.
(function () {
  var form = document.getElementById('upload-form');
  if (!form || !window.fetch || !window.crypto || !window.crypto.subtle || !window.Blob ||
      !Blob.prototype.arrayBuffer || !window.localStorage) {
    return;
  }
  var input = document.getElementById('file');
  var button = document.getElementById('upload-button');
  var box = document.getElementById('upload-progress');
  var bar = document.getElementById('upload-bar');
  var statusText = document.getElementById('upload-status');
  var csrf = form.querySelector('input[name="csrf_token"]').value;
  var isNew = form.getAttribute('data-new') === '1';
  document.getElementById('file-hint').textContent =
    'Any size can be sent. It goes in parts and carries on where it stopped if the connection ' +
    'drops; after a reload, choose the same file again to resume.';

  function say(text) { statusText.textContent = text; }
  function mb(bytes) { return (bytes / 1048576).toLocaleString('en-GB', { maximumFractionDigits: 1 }) + ' MB'; }
  function sleep(ms) { return new Promise(function (done) { setTimeout(done, ms); }); }
  function hex(buffer) {
    return Array.prototype.map.call(new Uint8Array(buffer), function (b) {
      return ('0' + b.toString(16)).slice(-2);
    }).join('');
  }
  function show(offset, size) {
    var percent = Math.floor(offset * 100 / size);
    bar.value = percent;
    say('Uploaded ' + mb(offset) + ' of ' + mb(size) + ' (' + percent + '%)');
  }
  function call(url, options) {
    options.headers = Object.assign({ 'X-CSRFToken': csrf }, options.headers || {});
    options.credentials = 'same-origin';
    return fetch(url, options);
  }
  function refused(response) {
    return response.json().then(function (body) { return body.error || 'The upload was refused'; },
                                 function () { return 'The upload was refused (' + response.status + ')'; });
  }

  function field(name) { var el = form.elements[name]; return el ? el.value : ''; }
  function description(file) {
    var body = { file_name: file.name, size: file.size };
    if (isNew) {
      body.register = { name: field('name'), title: field('title'), description: field('description'),
                        sensitivity: field('sensitivity') };
    } else {
      body.dataset_id = form.getAttribute('data-dataset-id');
    }
    var delimiter = field('delimiter').replace('\\t', '\t');
    if (delimiter) { body.dialect = { delimiter: delimiter }; }
    return body;
  }
  function keyOf(file) {
    return 'tre-upload:' + (isNew ? 'new:' + field('name') : form.getAttribute('data-dataset-id')) + ':' +
      file.name + ':' + file.size + ':' + file.lastModified;
  }

  // The upload to carry on with: the one this browser started for the same file, if the server still
  // has it open; otherwise a new one.
  function begin(file) {
    var key = keyOf(file);
    var known = localStorage.getItem(key);
    var resume = known ? call(known, { method: 'GET' }).then(function (response) {
      if (!response.ok) { return null; }
      return response.json().then(function (up) { return up.state === 'open' ? up : null; });
    }) : Promise.resolve(null);
    return resume.then(function (up) {
      if (up) { say('Carrying on from ' + mb(up.offset)); return up; }
      return call(form.getAttribute('data-create-url'), {
        method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(description(file))
      }).then(function (response) {
        if (!response.ok) { return refused(response).then(function (m) { throw new Error(m); }); }
        return response.json().then(function (made) { localStorage.setItem(key, made.url); return made; });
      });
    });
  }

  function send(file, up, chunkBytes) {
    var offset = up.offset;
    var waitMs = 1000;
    function next() {
      show(offset, file.size);
      if (offset >= file.size) { return Promise.resolve(); }
      var piece = file.slice(offset, Math.min(offset + chunkBytes, file.size));
      return piece.arrayBuffer().then(function (bytes) {
        return crypto.subtle.digest('SHA-256', bytes).then(function (digest) {
          return call(up.url, { method: 'PATCH', body: bytes, headers: {
            'Content-Type': 'application/offset+octet-stream', 'Upload-Offset': String(offset),
            'Upload-Checksum': 'sha256 ' + hex(digest) } });
        });
      }).then(function (response) {
        waitMs = 1000;
        if (response.status === 204 || response.status === 409) {
          offset = parseInt(response.headers.get('Upload-Offset'), 10);
          return next();
        }
        return refused(response).then(function (m) { throw new Error(m); });
      }, function () {
        // The connection dropped: ask where the upload stands, then carry on from there.
        say('The connection was lost at ' + mb(offset) + '; trying again in ' + waitMs / 1000 + ' seconds');
        return sleep(waitMs).then(function () {
          waitMs = Math.min(waitMs * 2, 30000);
          return call(up.url, { method: 'GET' }).then(function (response) {
            if (response.ok) { offset = parseInt(response.headers.get('Upload-Offset'), 10); }
            return next();
          }, next);
        });
      });
    }
    return next();
  }

  form.addEventListener('submit', function (event) {
    var file = input.files && input.files[0];
    if (!file) { return; }  // the server says what is missing
    event.preventDefault();
    button.disabled = true;
    box.hidden = false;
    var up;
    begin(file).then(function (made) {
      up = made;
      return send(file, up, made.chunk_bytes || parseInt(form.getAttribute('data-chunk-bytes'), 10));
    }).then(function () {
      say('All ' + mb(file.size) + ' received; handing it to the check');
      return call(up.finish_url + (isNew ? '?new=1' : ''), { method: 'POST' });
    }).then(function (response) {
      if (!response.ok) { return refused(response).then(function (m) { throw new Error(m); }); }
      return response.json().then(function (done) {
        localStorage.removeItem(keyOf(file));
        say('Upload complete');
        window.location.assign(done.next);
      });
    }).catch(function (error) {
      say(error.message + '. Correct it and upload again.');
      button.disabled = false;
    });
  });
})();
