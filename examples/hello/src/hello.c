#include <stdio.h>

#ifndef GREETING
#define GREETING "hello"
#endif

int main(void) {
    printf("%s, world\n", GREETING);
    return 0;
}
