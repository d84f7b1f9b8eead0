/**
 * "Submit for output checking…": a JupyterLab menu entry (Outputs menu and the file browser's
 * context menu) that asks for a title, the context and the disclosure controls, and sends the
 * selected files to the TRE's output-checking queue. "Resubmit a returned request…" (Outputs menu):
 * shows a returned request's files and the checkers' comments, replaces the chosen file with the
 * file selected in the file browser, and resubmits it.
 *
 * The browser never sees the output token: it POSTs the file paths to the workspace's own Jupyter
 * server (jupyter/workspace_guard.py, `tre/output-requests`), which checks them and submits them
 * with jupyter.client.submit, the same path as `tre-submit`.
 */

import { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { Dialog, ICommandPalette, showDialog, showErrorMessage } from '@jupyterlab/apputils';
import { PageConfig, URLExt } from '@jupyterlab/coreutils';
import { IDocumentManager } from '@jupyterlab/docmanager';
import { IDefaultFileBrowser } from '@jupyterlab/filebrowser';
import { IMainMenu } from '@jupyterlab/mainmenu';
import { ServerConnection } from '@jupyterlab/services';
import { Menu, Widget } from '@lumino/widgets';

const COMMAND = 'tre:submit-for-output-checking';
const ENDPOINT = ['tre', 'output-requests'];

interface IRequestText {
  title: string;
  context: string;
  controls: string;
}

/** The form inside the dialog: the files, then title, context and controls. */
class SubmitForm extends Widget implements Dialog.IBodyWidget<IRequestText> {
  constructor(paths: string[], text: IRequestText, problem: string, code: string) {
    super({ node: document.createElement('form') });
    this.addClass('tre-SubmitForm');
    const node = this.node as HTMLFormElement;
    node.style.display = 'flex';
    node.style.flexDirection = 'column';
    node.style.gap = '4px';
    node.style.minWidth = '420px';

    if (problem) {
      const warning = document.createElement('p');
      warning.className = 'tre-SubmitForm-problem';
      warning.setAttribute('role', 'alert');
      warning.style.color = 'var(--jp-error-color1)';
      warning.textContent = problem;
      node.appendChild(warning);
    }
    const intro = document.createElement('p');
    intro.textContent =
      'Output checkers review these files before anything leaves the workspace. ' +
      'Files to submit:';
    node.appendChild(intro);
    const list = document.createElement('ul');
    list.className = 'tre-SubmitForm-files';
    for (const path of paths) {
      const item = document.createElement('li');
      item.textContent = path;
      list.appendChild(item);
    }
    node.appendChild(list);
    const codeNote = document.createElement('p');
    codeNote.className = 'tre-SubmitForm-code';
    codeNote.textContent = code
      ? `The notebook ${code} goes with them: the output checkers re-run it, with no network, ` +
        'and compare what it makes with these files.'
      : 'No notebook is open, so no code goes with these files and they cannot be re-run.';
    node.appendChild(codeNote);

    this._title = this._field(node, 'tre-submit-title', 'Title (optional)', 'input', text.title);
    this._context = this._field(
      node,
      'tre-submit-context',
      'Context: what the outputs are (population, variables, how they were made)',
      'textarea',
      text.context
    );
    this._controls = this._field(
      node,
      'tre-submit-controls',
      'Controls: the disclosure control applied (e.g. counts under 10 suppressed, rounded to 5)',
      'textarea',
      text.controls
    );
    // Enter in the title field must not submit the form by itself (the dialog's button does).
    node.addEventListener('submit', event => event.preventDefault());
  }

  getValue(): IRequestText {
    return {
      title: this._title.value.trim(),
      context: this._context.value.trim(),
      controls: this._controls.value.trim()
    };
  }

  private _field(
    form: HTMLElement,
    id: string,
    label: string,
    kind: 'input' | 'textarea',
    value: string
  ): HTMLInputElement | HTMLTextAreaElement {
    const caption = document.createElement('label');
    caption.htmlFor = id;
    caption.textContent = label;
    const field = document.createElement(kind);
    field.id = id;
    field.className = 'jp-mod-styled';
    field.value = value;
    if (kind === 'textarea') {
      (field as HTMLTextAreaElement).rows = 3;
    }
    form.appendChild(caption);
    form.appendChild(field);
    return field;
  }

  private _title: HTMLInputElement | HTMLTextAreaElement;
  private _context: HTMLInputElement | HTMLTextAreaElement;
  private _controls: HTMLInputElement | HTMLTextAreaElement;
}

/** The files to submit: those selected in the file browser, else the open document. */
function chosenPaths(
  app: JupyterFrontEnd,
  browser: IDefaultFileBrowser,
  docManager: IDocumentManager | null
): string[] {
  const selected = Array.from(browser.selectedItems())
    .filter(item => item.type !== 'directory')
    .map(item => item.path);
  if (selected.length) {
    return selected;
  }
  const current = app.shell.currentWidget;
  const context = current && docManager ? docManager.contextForWidget(current) : undefined;
  return context ? [context.path] : [];
}

/** The notebook the researcher is working in (the current widget, if it is a notebook): its code is re-run. */
function currentNotebook(app: JupyterFrontEnd, docManager: IDocumentManager | null): string {
  const current = app.shell.currentWidget;
  const context = current && docManager ? docManager.contextForWidget(current) : undefined;
  return context && context.path.endsWith('.ipynb') ? context.path : '';
}

async function askAndSubmit(app: JupyterFrontEnd, paths: string[], code: string): Promise<void> {
  let text: IRequestText = { title: '', context: '', controls: '' };
  let problem = '';
  for (;;) {
    const answer = await showDialog({
      title: 'Submit for output checking',
      body: new SubmitForm(paths, text, problem, code),
      buttons: [Dialog.cancelButton(), Dialog.okButton({ label: 'Submit' })],
      focusNodeSelector: '#tre-submit-title'
    });
    if (!answer.button.accept || !answer.value) {
      return;
    }
    text = answer.value;
    problem = !text.context
      ? 'Describe what the outputs are (context) before submitting.'
      : !text.controls
        ? 'Describe the disclosure controls applied (controls) before submitting.'
        : '';
    if (!problem) {
      break;
    }
  }

  const settings = app.serviceManager.serverSettings;
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(
      URLExt.join(settings.baseUrl, ...ENDPOINT),
      { method: 'POST', body: JSON.stringify({ paths, ...text, ...(code ? { code } : {}) }) },
      settings
    );
  } catch (error) {
    await showErrorMessage('Not submitted', `The workspace server could not be reached: ${error}`);
    return;
  }
  let reply: any = {};
  try {
    reply = await response.json();
  } catch {
    reply = {};
  }
  if (!response.ok) {
    await showErrorMessage(
      'Not submitted',
      reply.message || `The workspace server refused the request (HTTP ${response.status}).`
    );
    return;
  }
  const done = document.createElement('div');
  done.className = 'tre-SubmitResult';
  const id = document.createElement('p');
  id.textContent = `Output request ${reply.id} is ${reply.state || 'submitted'}.`;
  const next = document.createElement('p');
  next.textContent =
    'Output checkers will review it; you will see their decision on the output requests page.';
  done.appendChild(id);
  done.appendChild(next);
  await showDialog({
    title: 'Submitted for output checking',
    body: new Widget({ node: done }),
    buttons: [Dialog.okButton({ label: 'Close' })]
  });
}

// ---------------------------------------------------------------- resubmission (issue 17)

const RESUBMIT_COMMAND = 'tre:resubmit-returned-request';

interface IRequestFile {
  name: string;
  group: string;
  automated_status: string | null;
}

interface IRequestStatus {
  id: string;
  title: string;
  state: string;
  round: number;
  files: IRequestFile[];
  comments: string[];
}

interface IReplacement {
  replace: string;
  group: string;
  context: string;
  controls: string;
}

/** Asks which returned request to change (its id, shown when it was submitted and on its page). */
class RequestIdForm extends Widget implements Dialog.IBodyWidget<string> {
  constructor(replacement: string, problem: string) {
    super({ node: document.createElement('form') });
    this.addClass('tre-ResubmitIdForm');
    const node = this.node as HTMLFormElement;
    node.style.display = 'flex';
    node.style.flexDirection = 'column';
    node.style.gap = '4px';
    node.style.minWidth = '420px';
    if (problem) {
      const warning = document.createElement('p');
      warning.setAttribute('role', 'alert');
      warning.style.color = 'var(--jp-error-color1)';
      warning.textContent = problem;
      node.appendChild(warning);
    }
    const intro = document.createElement('p');
    intro.textContent = `Replace a file of a request the output checkers returned for changes with ${replacement}.`;
    node.appendChild(intro);
    const caption = document.createElement('label');
    caption.htmlFor = 'tre-resubmit-id';
    caption.textContent = 'Output request id';
    this._id = document.createElement('input');
    this._id.id = 'tre-resubmit-id';
    this._id.className = 'jp-mod-styled';
    node.appendChild(caption);
    node.appendChild(this._id);
    node.addEventListener('submit', event => event.preventDefault());
  }

  getValue(): string {
    return this._id.value.trim();
  }

  private _id: HTMLInputElement;
}

/** Lists the returned request's files (one to replace), the checkers' comments, and new text if any. */
class ReplaceForm extends Widget implements Dialog.IBodyWidget<IReplacement> {
  constructor(status: IRequestStatus, replacement: string, problem: string) {
    super({ node: document.createElement('form') });
    this.addClass('tre-ResubmitForm');
    const node = this.node as HTMLFormElement;
    node.style.display = 'flex';
    node.style.flexDirection = 'column';
    node.style.gap = '4px';
    node.style.minWidth = '460px';
    if (problem) {
      const warning = document.createElement('p');
      warning.setAttribute('role', 'alert');
      warning.style.color = 'var(--jp-error-color1)';
      warning.textContent = problem;
      node.appendChild(warning);
    }
    const heading = document.createElement('p');
    heading.textContent = `"${status.title}" (round ${status.round}) is ${status.state}.`;
    node.appendChild(heading);
    if (status.comments.length) {
      const said = document.createElement('p');
      said.textContent = 'The output checkers said:';
      node.appendChild(said);
      const comments = document.createElement('ul');
      comments.className = 'tre-ResubmitForm-comments';
      for (const comment of status.comments) {
        const item = document.createElement('li');
        item.textContent = comment;
        comments.appendChild(item);
      }
      node.appendChild(comments);
    }
    const fieldset = document.createElement('fieldset');
    fieldset.className = 'tre-ResubmitForm-files';
    const legend = document.createElement('legend');
    legend.textContent = `Replace this file with ${replacement}:`;
    fieldset.appendChild(legend);
    const base = replacement.split('/').pop() || replacement;
    status.files.forEach((file, index) => {
      const row = document.createElement('div');
      const radio = document.createElement('input');
      radio.type = 'radio';
      radio.name = 'tre-resubmit-file';
      radio.id = `tre-resubmit-file-${index}`;
      radio.value = String(index);
      radio.checked = file.name === base || (index === 0 && !status.files.some(f => f.name === base));
      const label = document.createElement('label');
      label.htmlFor = radio.id;
      const verdict = file.automated_status ? `, automated check: ${file.automated_status}` : '';
      label.textContent = ` ${file.name} (${file.group}${verdict})`;
      row.appendChild(radio);
      row.appendChild(label);
      fieldset.appendChild(row);
      this._radios.push(radio);
    });
    node.appendChild(fieldset);
    this._files = status.files;
    this._context = this._area(node, 'tre-resubmit-context', 'New context (optional: empty keeps the current one)');
    this._controls = this._area(node, 'tre-resubmit-controls', 'New controls (optional: empty keeps the current ones)');
    node.addEventListener('submit', event => event.preventDefault());
  }

  getValue(): IReplacement {
    const chosen = this._radios.findIndex(radio => radio.checked);
    const file = chosen >= 0 ? this._files[chosen] : undefined;
    return {
      replace: file ? file.name : '',
      group: file ? file.group : '',
      context: this._context.value.trim(),
      controls: this._controls.value.trim()
    };
  }

  private _area(form: HTMLElement, id: string, label: string): HTMLTextAreaElement {
    const caption = document.createElement('label');
    caption.htmlFor = id;
    caption.textContent = label;
    const field = document.createElement('textarea');
    field.id = id;
    field.className = 'jp-mod-styled';
    field.rows = 2;
    form.appendChild(caption);
    form.appendChild(field);
    return field;
  }

  private _files: IRequestFile[];
  private _radios: HTMLInputElement[] = [];
  private _context: HTMLTextAreaElement;
  private _controls: HTMLTextAreaElement;
}

/** GET or POST to the workspace server's tre/output-requests endpoints; the reply's JSON, or why not. */
async function workspaceCall(
  app: JupyterFrontEnd,
  path: string[],
  init: RequestInit
): Promise<{ ok: boolean; reply: any }> {
  const settings = app.serviceManager.serverSettings;
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(URLExt.join(settings.baseUrl, ...path), init, settings);
  } catch (error) {
    return { ok: false, reply: { message: `The workspace server could not be reached: ${error}` } };
  }
  let reply: any = {};
  try {
    reply = await response.json();
  } catch {
    reply = {};
  }
  if (!response.ok && !reply.message) {
    reply.message = `The workspace server refused the request (HTTP ${response.status}).`;
  }
  return { ok: response.ok, reply };
}

async function askAndResubmit(app: JupyterFrontEnd, replacement: string): Promise<void> {
  let problem = '';
  let status: IRequestStatus | undefined;
  while (!status) {
    const asked = await showDialog({
      title: 'Resubmit a returned request',
      body: new RequestIdForm(replacement, problem),
      buttons: [Dialog.cancelButton(), Dialog.okButton({ label: 'Show its files' })],
      focusNodeSelector: '#tre-resubmit-id'
    });
    if (!asked.button.accept) {
      return;
    }
    if (!asked.value || !/^[A-Za-z0-9_-]{1,64}$/.test(asked.value)) {
      problem = 'Give the id of the output request (letters, digits, - and _).';
      continue;
    }
    const found = await workspaceCall(app, [...ENDPOINT, asked.value], { method: 'GET' });
    if (!found.ok) {
      problem = found.reply.message;
      continue;
    }
    status = found.reply as IRequestStatus;
  }
  if (status.state !== 'returned') {
    await showErrorMessage(
      'Not returned for changes',
      `Output request ${status.id} is ${status.state}: only a request the checkers returned for changes can be resubmitted.`
    );
    return;
  }
  problem = '';
  for (;;) {
    const answer = await showDialog({
      title: 'Replace a file and resubmit',
      body: new ReplaceForm(status, replacement, problem),
      buttons: [Dialog.cancelButton(), Dialog.okButton({ label: 'Replace and resubmit' })]
    });
    if (!answer.button.accept || !answer.value) {
      return;
    }
    if (!answer.value.replace) {
      problem = 'Choose the file to replace.';
      continue;
    }
    const sent = await workspaceCall(app, ENDPOINT, {
      method: 'POST',
      body: JSON.stringify({ resubmit: status.id, paths: [replacement], ...answer.value })
    });
    if (!sent.ok) {
      await showErrorMessage('Not resubmitted', sent.reply.message);
      return;
    }
    const done = document.createElement('div');
    done.className = 'tre-ResubmitResult';
    done.textContent = `Output request ${sent.reply.id} is ${sent.reply.state || 'submitted'} again, with ${replacement} in place of ${answer.value.replace}.`;
    await showDialog({
      title: 'Resubmitted for output checking',
      body: new Widget({ node: done }),
      buttons: [Dialog.okButton({ label: 'Close' })]
    });
    return;
  }
}

function addResubmitCommand(
  app: JupyterFrontEnd,
  browser: IDefaultFileBrowser,
  docManager: IDocumentManager | null
): void {
  app.commands.addCommand(RESUBMIT_COMMAND, {
    label: 'Resubmit a returned request…',
    caption: 'Replace a file of a request the output checkers returned for changes, and resubmit it',
    execute: async () => {
      const paths = chosenPaths(app, browser, docManager);
      if (paths.length !== 1) {
        await showErrorMessage(
          'Choose the new file',
          'Select the one file that replaces a file of the returned request, then choose Resubmit a returned request.'
        );
        return;
      }
      await askAndResubmit(app, paths[0]);
    }
  });
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'tre-output-submit:plugin',
  description: 'Submit selected files for output checking from the menu or the file browser.',
  autoStart: true,
  requires: [IDefaultFileBrowser],
  optional: [IMainMenu, ICommandPalette, IDocumentManager],
  activate: (
    app: JupyterFrontEnd,
    browser: IDefaultFileBrowser,
    mainMenu: IMainMenu | null,
    palette: ICommandPalette | null,
    docManager: IDocumentManager | null
  ) => {
    app.commands.addCommand(COMMAND, {
      label: 'Submit for output checking…',
      caption: 'Send the selected files to the output checkers with their context and controls',
      execute: async () => {
        const paths = chosenPaths(app, browser, docManager);
        if (!paths.length) {
          await showErrorMessage(
            'Nothing to submit',
            'Select one or more files in the file browser, then choose Submit for output checking.'
          );
          return;
        }
        await askAndSubmit(app, paths, currentNotebook(app, docManager));
      }
    });
    addResubmitCommand(app, browser, docManager);

    app.contextMenu.addItem({
      command: COMMAND,
      selector: '.jp-DirListing-item[data-isdir="false"]',
      rank: 3
    });
    if (mainMenu) {
      const menu = new Menu({ commands: app.commands });
      menu.id = 'tre-outputs-menu';
      menu.title.label = 'Outputs';
      menu.addItem({ command: COMMAND });
      menu.addItem({ command: RESUBMIT_COMMAND });
      mainMenu.addMenu(menu, true, { rank: 1000 });
    }
    if (palette) {
      palette.addItem({ command: COMMAND, category: 'Outputs' });
      palette.addItem({ command: RESUBMIT_COMMAND, category: 'Outputs' });
    }
  }
};

/**
 * The project's name in JupyterLab's top bar, as a link back to its page in the TRE. The workspace's
 * Jupyter server puts both in the page config (jupyter/workspace_guard.py, from the hub's
 * TRE_PROJECT_NAME and TRE_PROJECT_URL).
 */
const projectPlugin: JupyterFrontEndPlugin<void> = {
  id: 'tre-output-submit:project',
  description: "Shows the workspace's project and links back to its page in the TRE.",
  autoStart: true,
  activate: (app: JupyterFrontEnd) => {
    const name = PageConfig.getOption('treProjectName');
    const url = PageConfig.getOption('treProjectUrl');
    if (!name) {
      return;
    }
    const node = document.createElement('div');
    node.className = 'tre-Project';
    node.style.display = 'flex';
    node.style.alignItems = 'center';
    node.style.padding = '0 12px';
    node.style.fontSize = 'var(--jp-ui-font-size1)';
    const label = document.createElement('span');
    label.textContent = 'Project: ';
    node.appendChild(label);
    if (/^https?:\/\//.test(url)) {
      const link = document.createElement('a');
      link.href = url;
      link.target = '_blank';
      link.rel = 'noopener noreferrer';
      link.title = 'Back to the project page in the TRE';
      link.textContent = name;
      link.style.textDecoration = 'underline';
      node.appendChild(link);
    } else {
      const text = document.createElement('strong');
      text.textContent = name;
      node.appendChild(text);
    }
    const widget = new Widget({ node });
    widget.id = 'tre-project';
    app.shell.add(widget, 'top', { rank: 1000 });
  }
};

export default [plugin, projectPlugin];
