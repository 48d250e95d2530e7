/* app/commands.h: the subcommands of the vlmtrain program. Each takes the
 * arguments after its name and returns 0 on success, -1 on error (already
 * reported) or CMD_USAGE_ERROR for a wrong option value (already reported);
 * main() turns that into the exit status. */
#ifndef VLM_APP_COMMANDS_H
#define VLM_APP_COMMANDS_H

#define CMD_USAGE_ERROR 2 /* also the exit status */

int cmd_params(int argc, char **argv);
int cmd_init(int argc, char **argv);
int cmd_mkdata(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_scaling(int argc, char **argv);
int cmd_import(int argc, char **argv);
int cmd_export(int argc, char **argv);

#endif
